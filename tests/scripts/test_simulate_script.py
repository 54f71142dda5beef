"""scripts/simulate.py end to end (subprocess): runs without jax, is deterministic,
writes slowdowns and the SLO verdict, and rejects bad input with a clear message;
every configs/sim/*.py design builds and runs."""

import json
from pathlib import Path

import pytest

from splitjax.config import from_config_dict
from splitjax.metrics import RequestStatus
from splitjax.provision_layout import machine_price
from splitjax.serve_config import ClusterPolicy
from splitjax.sim import slo
from splitjax.sim.build import build
from splitjax.sim.hardware import get_hardware
from splitjax.sim.perf_model import default_profile_path
from splitjax.sim.sim_config import SimConfig
from splitjax.workload import shared_trace_path
from tests.scripts.run_script import config_of, run_script

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "sim").glob("[!_]*.py"))
PAPER_DESIGNS = [ROOT / "configs" / "sim" / f"{name}.py" for name in (
    "baseline_a100", "baseline_h100", "splitwise_aa", "splitwise_ha", "splitwise_hh",
    "splitwise_hhcap")]
needs_profiles = pytest.mark.skipif(not default_profile_path().exists(),
                                    reason="needs ../shared/data/splitwise-profiles")
needs_conv = pytest.mark.skipif(not shared_trace_path("conv").exists(),
                                reason="needs ../shared/data/azure-llm-2023 (conversation trace)")


def _trace(path: Path) -> Path:
  rows = [(s, 200 + 97 * s % 1800, 1 + 13 * s % 300) for s in range(40)]
  path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
      f"2023-11-16 18:{s // 60:02d}:{s % 60:02d}.5000000,{p},{o}\n" for s, p, o in rows))
  return path


def _simulate(*args, check=True):
  return run_script("simulate.py", *args, check=check)


@needs_profiles
def test_simulate_is_deterministic(tmp_path):
  trace = _trace(tmp_path / "t.csv")
  outs = []
  for run in range(2):
    out = tmp_path / f"out{run}"
    proc = _simulate(f"--config.workload.trace={trace}", "--config.cluster.prompt.machines=2",
                     "--config.cluster.token.machines=1", f"--output_dir={out}")
    assert "SLO met" in proc.stdout or "SLO NOT met" in proc.stdout
    outs.append((out / "summary.json").read_bytes())
    assert set(json.loads((out / "timing.json").read_text())) == {"setup_s", "run_s", "slo_s"}
  assert outs[0] == outs[1]                        # byte-identical
  outs = [json.loads(o) for o in outs]
  assert outs[0]["requests"]["submitted"] == outs[0]["requests"]["completed"] == 40
  assert set(outs[0]["slowdown"]) == {"ttft", "tbt", "e2e"}
  assert all(set(v) == {"p50", "p90", "p99"} for v in outs[0]["slowdown"].values())
  checks = outs[0]["slo"]["per_metric"]
  assert len(checks) == 9 and checks["ttft_p50"]["limit"] == 2.0
  assert outs[0]["slo"]["met"] == all(c["met"] for c in checks.values())
  assert checks["tbt_p99"]["slowdown"] == outs[0]["slowdown"]["tbt"]["p99"]
  csv_rows = (tmp_path / "out0" / "requests.csv").read_text().splitlines()
  assert len(csv_rows) == 41


def test_simulate_bad_input_is_a_clear_error(tmp_path):
  proc = _simulate("--config.cluster.token.machines=0", check=False)
  assert proc.returncode == 2 and "token.machines=0" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _simulate(f"--config.workload.trace={tmp_path / 'missing.csv'}", check=False)
  assert proc.returncode == 2 and "does not exist" in proc.stderr
  bad = tmp_path / "bad.csv"
  bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00,10,2\nx,1\n")
  proc = _simulate(f"--config.workload.trace={bad}", check=False)
  assert proc.returncode == 2 and f"{bad}:3" in proc.stderr
  proc = _simulate("--config.slo.ttft=(2.0, 3.0)", check=False)
  assert proc.returncode == 2 and "slo.ttft" in proc.stderr and "Traceback" not in proc.stderr


@needs_profiles
def test_simulate_reference_machine_without_a_profile_is_a_clear_error(tmp_path):
  proc = _simulate(f"--config.workload.trace={_trace(tmp_path / 't.csv')}",
                   "--config.slo.reference_hardware=cpu-host", check=False)
  assert proc.returncode == 2 and "SLO reference machine 'cpu-host'" in proc.stderr
  assert "Traceback" not in proc.stderr


def _design(path: Path):
  return config_of(path)


def test_the_six_designs_of_the_paper_are_there():
  assert set(PAPER_DESIGNS) <= set(CONFIGS)


@pytest.mark.parametrize("path", PAPER_DESIGNS, ids=lambda p: p.stem)
def test_designs_fit_the_iso_power_budget_of_40_dgx_h100(path):
  """GPU power (Table I): 40 x 8 x 700 W = 224 kW; a design leaves less than one
  machine of it unused."""
  cfg = from_config_dict(SimConfig, _design(path))
  pools = ([cfg.cluster.prompt, cfg.cluster.token]
           if cfg.scheduler.policy == ClusterPolicy.SPLIT else [cfg.cluster.colocated])
  watts = [(p.machines, machine_price(get_hardware(p.hardware)).power_w) for p in pools]
  used = sum(n * w for n, w in watts)
  assert 224e3 - max(w for _, w in watts) < used <= 224e3 + 1e-6
  assert cfg.scheduler.mixed_pool == (cfg.scheduler.policy == ClusterPolicy.SPLIT)
  assert cfg.model.name == "llama2-70b" and cfg.workload.duration_s == 0.0


@needs_profiles
@needs_conv
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_sim_config_builds_and_runs_on_a_trace_window(path):
  c = _design(path)
  c.workload.duration_s = 20.0
  cfg = from_config_dict(SimConfig, c)
  if cfg.cluster.profile_path and not Path(cfg.cluster.profile_path).exists():
    pytest.skip(f"needs the profile {cfg.cluster.profile_path} (see {path.name})")
  sim, specs = build(cfg)
  result = sim.run(specs)
  assert specs and all(r.status == RequestStatus.COMPLETED for r in result.records)
  report = slo.evaluate(cfg, result.records)
  assert len(report.checks) == 9 and report.slowdown_dict()["e2e"]["p50"] > 0


@needs_profiles
@needs_conv
@pytest.mark.parametrize("name", ["splitwise_hh", "baseline_h100"])
def test_overloaded_small_cluster_conserves_requests_and_never_overfills_kv(name):
  """A 5-machine cluster with little KV memory at 40 req/s: the mixed pool borrows,
  memory binds, and still every request ends completed (or with a reason), with KV
  checked against capacity after every event."""
  c = _design(ROOT / "configs" / "sim" / f"{name}.py")
  c.cluster.prompt.machines, c.cluster.token.machines, c.cluster.colocated.machines = 3, 2, 5
  c.cluster.kv_memory_fraction = 0.01
  c.workload.rate, c.workload.rate_duration_s = 40.0, 20.0
  c.check_memory = True
  cfg = from_config_dict(SimConfig, c)
  sim, specs = build(cfg)
  result = sim.run(specs)
  d = result.to_dict()
  assert d["requests"]["submitted"] == len(specs) > 500
  assert d["requests"]["completed"] + d["requests"]["failed"] == len(specs)
  assert all(r.reason for r in result.records if r.status != RequestStatus.COMPLETED)
  assert d["occupancy"]["kv_used_fraction"]["max"] > 0.5          # memory really binds
  if name == "splitwise_hh":
    assert d["mixed_pool"]["borrowings"] > 0


def test_explicit_kv_capacity_is_used_and_checked():
  from splitjax.config import ConfigError
  from splitjax.sim.build import kv_capacity_tokens
  c = _design(ROOT / "configs" / "sim" / "splitwise_hh.py")
  hw = get_hardware("dgx-h100")
  assert kv_capacity_tokens(from_config_dict(SimConfig, c), hw) > 10**6   # from memory
  c.cluster.kv_capacity_tokens = 4096
  assert kv_capacity_tokens(from_config_dict(SimConfig, c), hw) == 4096
  c.cluster.kv_capacity_tokens = 10**9
  with pytest.raises(ConfigError, match="kv_capacity_tokens=1000000000 needs"):
    kv_capacity_tokens(from_config_dict(SimConfig, c), hw)


def test_batch_only_decode_ignores_context_and_needs_a_profile():
  """The paper simulator's decode model, switchable for comparison: the same
  requests decode in the same time whatever their contexts."""
  from splitjax.config import ConfigError
  c = _design(ROOT / "configs" / "sim" / "splitwise_hh.py")
  c.workload.max_requests = 300
  c.cluster.decode_model = "batch_only"
  sim, specs = build(from_config_dict(SimConfig, c))
  perf = sim.perf["token0"]
  assert perf.decode_time([100] * 8) == perf.decode_time([8000] * 8)
  result = sim.run(specs)
  assert result.summary.completed == len(specs)
  c.cluster.perf_model = "roofline"
  with pytest.raises(ConfigError, match="decode_model=batch_only .* needs cluster.perf_model=profile"):
    from_config_dict(SimConfig, c)
