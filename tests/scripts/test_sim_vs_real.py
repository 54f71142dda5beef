"""scripts/sim_vs_real.py end to end on a short slice (12 s of the conversation
trace, prompts <= 256 and outputs <= 32 tokens, a small profile grid).

Checks the pipeline stays wired up: every request completes in the serve run and
in both simulations, and the shared-host (contention-aware) simulation's p50 TTFT
and TBT are within RATIO of the measured ones (within ~25% on a quiet machine).
The bound is loose on purpose: on a shared 2-core machine another process can slow
either side ~2x; a unit mix-up (ms vs s) would be off by far more. Nothing asserts
on wall time.
"""

import json
from pathlib import Path

import pytest

from splitjax.workload import shared_trace_path
from tests.scripts.run_script import run_script

RATIO = 4.0
SHORT = ["--config.workload.duration_s=12", "--config.workload.max_prompt_tokens=256",
         "--config.workload.max_output_tokens=32", "--prompt_sizes=64,128,256",
         "--batch_sizes=1,4,16", "--token_size=4", "--repeats=1", "--concurrency=2",
         "--contention_prompt_sizes=128", "--contention_batch_sizes=1,16"]
needs_trace = pytest.mark.skipif(not shared_trace_path("conv").exists(),
                                 reason="needs ../shared/data/azure-llm-2023 (the Azure trace)")


@pytest.fixture(scope="module")
def check(tmp_path_factory):
  """One short run of the whole check: (output dir, sim_vs_real.json, stdout)."""
  out = tmp_path_factory.mktemp("sim_vs_real")
  proc = run_script("sim_vs_real.py", *SHORT, f"--output_dir={out}", timeout=600)
  return out, json.loads((out / "sim_vs_real.json").read_text()), proc.stdout


@needs_trace
def test_every_request_completes_on_both_sides(check):
  _, report, _ = check
  sims = report["simulated"]
  assert set(sims) == {"sim_solo", "sim_shared_host"}
  for summary in (report["measured"], *sims.values()):
    req = summary["requests"]
    assert req["submitted"] > 5
    assert req["completed"] == req["submitted"] == report["requests"]["submitted"]


@needs_trace
def test_simulated_p50_latencies_are_close_to_measured(check):
  _, report, _ = check
  measured, sim = report["measured"], report["simulated"]["sim_shared_host"]
  for key in ("ttft_s", "tbt_s"):
    ratio = sim[key]["p50"] / measured[key]["p50"]
    assert 1 / RATIO < ratio < RATIO, (key, sim[key]["p50"], measured[key]["p50"])
  assert report["contention_slowdown"]["decode"]["2"] > 1.0    # two instances share the cores


@needs_trace
def test_report_table_profiles_and_machine_check(check):
  out, report, stdout = check
  assert [r["metric"] for r in report["table"]] == [
      "TTFT p50 (s)", "TTFT p90 (s)", "TBT p50 (s)", "TBT p90 (s)", "E2E p50 (s)",
      "ITL p50 (s)", "throughput (req/s)", "busy instances (mean)"]
  for row in report["table"]:
    assert row["sim_solo_ratio"] == pytest.approx(row["sim_solo"] / row["measured"])
  for name in ("profile_solo.csv", "profile_x2.csv", "serve/summary.json",
               "sim_solo/summary.json", "sim_shared_host/summary.json"):
    assert (out / name).exists(), name
  rows = (out / "profile_solo.csv").read_text().splitlines()
  assert rows[1].startswith("tiny,cpu-host,") and rows[1].endswith(",1")   # tp column 1
  assert isinstance(report["machine"]["quiet"], bool)
  assert [s["name"] for s in report["machine"]["steps"]] == ["profile_solo", "profile_x2",
                                                             "serve"]
  assert "machine check during serve" in stdout and "TTFT p50 (s)" in stdout


@needs_trace
def test_reuse_skips_profiling_and_serving(check, tmp_path):
  out, first, _ = check
  run_script("sim_vs_real.py", *SHORT, f"--output_dir={tmp_path}",
             f"--reuse_profiles={out}", f"--serve_summary={out / 'serve' / 'summary.json'}")
  again = json.loads((tmp_path / "sim_vs_real.json").read_text())
  assert again["machine"]["steps"] == [] and again["machine"]["quiet"] is None
  assert again["measured"] == first["measured"]
  assert again["simulated"] == first["simulated"]      # the simulations are deterministic


def test_missing_reused_profiles_are_a_clear_error(tmp_path):
  proc = run_script("sim_vs_real.py", f"--output_dir={tmp_path}",
                    f"--reuse_profiles={tmp_path / 'none'}", check=False)
  assert proc.returncode == 2 and "--reuse_profiles: missing" in proc.stderr
  assert "Traceback" not in proc.stderr
