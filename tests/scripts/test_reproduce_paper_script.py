"""scripts/reproduce_paper.py end to end (subprocess) on a tiny instance: the
paper's budgets x 0.1 (4 DGX-H100 / 7 DGX-A100), 200-request probes (300 for
the probe-length check), the conversation trace only; report.md, results.json
and the figures, then a cached re-run."""

import json
import re

import pytest

from splitjax import paper_claims as C
from splitjax.workload import shared_trace_path
from tests.scripts.run_script import run_script


def _have_data() -> bool:
  from splitjax.sim.perf_model import default_profile_path
  try:
    return shared_trace_path("conv").exists() and default_profile_path().exists()
  except Exception:                       # noqa: BLE001 (no data directory at all)
    return False


pytestmark = pytest.mark.skipif(not _have_data(), reason="needs ../shared/data (Azure conv "
                                "trace and the Splitwise profiles)")


def test_reproduce_paper_writes_report_results_and_figures(tmp_path):
  pytest.importorskip("matplotlib", reason="figures need the 'report' extra (matplotlib)")
  out = tmp_path / "paper"
  args = ("--budget_scale=0.1", "--requests=200", "--min_duration_s=20", "--step=2",
          "--tolerance=0.2", "--traces=conv", "--check_duration_s=30", "--workers=2",
          f"--cache_dir={tmp_path / 'cache'}", f"--output_dir={out}")
  proc = run_script("reproduce_paper.py", *args, timeout=120)
  # 7 designs x 2 budgets + Splitwise-any with lazy borrowing x 2 budgets, HHcap at
  # Baseline-H100's rate, and the reruns of any deviating claim: every one planned runs
  done = re.findall(r"^\[(\d+)/(\d+)\] ", proc.stdout, re.M)
  assert len(done) >= 17 and done[-1][0] == done[-1][1] and "wrote" in proc.stdout
  md = (out / "report.md").read_text()
  for key in C.ClaimKey:
    assert key.text in md
  assert "30 s probes" in md.split("## Probe length")[1]
  results = json.loads((out / "results.json").read_text())
  assert [c["claim"] for c in results["claims"]] == [k.text for k in C.ClaimKey]
  assert all({"claim", "paper_value", "our_value"} <= set(c) for c in results["claims"])
  by_key = {c["claim"]: c for c in results["claims"]}
  assert by_key[C.ClaimKey.SAME_COST_AND_POWER.text]["our_value"] > 0
  assert by_key[C.ClaimKey.CODE_COST_OPTIMAL.text]["our_value"] is None   # code not run
  names = results["figures"]
  assert {"throughput_vs_cost.png", "throughput_vs_power.png", "hh_sweep_conv.png",
          "latency_cdf_conv.png"} <= set(names)
  for n in names:
    assert (out / n).read_bytes()[:4] == b"\x89PNG" and f"]({n})" in md
  run_script("reproduce_paper.py", *args, f"--output_dir={tmp_path / 'again'}")
  again = json.loads((tmp_path / "again" / "results.json").read_text())
  assert again["claims"] == results["claims"]                      # every probe from the cache
  assert again["timing"]["searches_s"] < results["timing"]["searches_s"]
  assert len(results["searches"]) == int(done[-1][0])
  assert results["timing"]["cpu_s"] > 0


def test_bad_trace_is_a_clean_error(tmp_path):
  proc = run_script("reproduce_paper.py", "--traces=chat", f"--output_dir={tmp_path}",
                    check=False)
  assert proc.returncode == 2 and "error:" in proc.stderr
