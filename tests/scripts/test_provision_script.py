"""scripts/provision.py end to end (subprocess) on a small instance: table, winner,
results.json, an instant cached re-run, clear errors; every configs/provision/*.py
parses and spans a non-empty candidate set."""

import json
from pathlib import Path

import pytest

from splitjax.config import from_config_dict
from splitjax.provision import (BudgetKind, Design, ProvisionConfig, budget_layouts, prices)
from tests.scripts.run_script import config_of, run_script

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "provision").glob("[!_]*.py"))


def _trace(path: Path) -> Path:
  rows = [(s, 200 + 97 * s % 1800, 1 + 13 * s % 300) for s in range(40)]
  path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
      f"2023-11-16 18:{s // 60:02d}:{s % 60:02d}.5000000,{p},{o}\n" for s, p, o in rows))
  return path


def _small(tmp_path, *extra):
  """hh_iso_power.py shrunk: 4 DGX-H100 of power, roofline, ~150-request probes
  judged whole (no minimum duration)."""
  return ("--config", str(ROOT / "configs" / "provision" / "hh_iso_power.py"),
          f"--config.sim.workload.trace={_trace(tmp_path / 't.csv')}",
          "--config.sim.cluster.perf_model=roofline", "--config.budget.power_w=22400",
          "--config.space.step=1", "--config.space.refine_step=0",
          "--config.probe.requests=150", "--config.probe.min_duration_s=0",
          "--config.probe.measure_from=0", "--config.probe.measure_to=1", "--workers=1",
          f"--cache_dir={tmp_path / 'cache'}",
          *extra)


def test_provision_prints_the_table_and_winner_and_reruns_from_the_cache(tmp_path):
  out1, out2 = tmp_path / "a", tmp_path / "b"
  proc = run_script("provision.py", *_small(tmp_path, f"--output_dir={out1}"))
  assert "iso-power 22.4 kW" in proc.stdout
  assert proc.stdout.count("max ") >= 3 and "[3/3]" in proc.stdout        # progress lines
  assert "req/s/($/h)" in proc.stdout and "winner (iso-power 22.4 kW): " in proc.stdout
  table = [line for line in proc.stdout.splitlines() if " dgx-h100 " in line
           and line[:1] in " *"]
  assert len(table) == 3 and sum(line.startswith("*") for line in table) == 1
  results = json.loads((out1 / "results.json").read_text())
  assert set(results) >= {"config", "design", "budget", "best", "rows", "probes"}
  assert results["budget"]["kind"] == "iso_power" and len(results["rows"]) == 3
  best = results["best"]
  assert best["max_rate"] == max(r["max_rate"] for r in results["rows"]) > 0
  assert best["power_w"] == 22400 and best["cost_per_hour_usd"] == 4 * 38
  assert best["rate_per_cost"] == pytest.approx(best["max_rate"] / 152)
  rerun = run_script("provision.py", *_small(tmp_path, f"--output_dir={out2}"))
  assert rerun.stdout.count("cached)") == 3
  assert (out2 / "results.json").read_bytes() == (out1 / "results.json").read_bytes()
  assert json.loads((out2 / "timing.json").read_text())["search_s"] < 1.0


def test_provision_iso_throughput(tmp_path):
  proc = run_script("provision.py", *_small(
      tmp_path, "--config.budget.kind=iso_throughput", "--config.budget.rate=20",
      "--config.space.max_machines=3", f"--output_dir={tmp_path / 'out'}"))
  assert "winner (iso-throughput 20 req/s, least cost)" in proc.stdout
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  best = results["best"]
  assert best["mode"] == "max_rate" and best["max_rate"] >= 20        # measured after
  assert all(r["cost_per_hour_usd"] >= best["cost_per_hour_usd"]
             for r in results["rows"] if r["max_rate"] >= 20)


@pytest.mark.parametrize("args,message", [
    (("--config.budget.power_w=5000",), "too small for any split layout"),
    (("--config.space.token_kinds=('dgx-b300',)",), "unknown hardware 'dgx-b300'"),
    (("--config.budget.kind=iso_cost",), "needs budget.cost_per_hour_usd > 0"),
    (("--config.probe.requests=0",), "probe.requests > 0 or probe.duration_s > 0"),
    (("--config.budget.minimize=speed",), "budget.minimize"),
])
def test_provision_bad_input_is_a_clear_error(tmp_path, args, message):
  proc = run_script("provision.py", *_small(tmp_path, *args), check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


def test_provision_missing_trace_is_a_clear_error(tmp_path):
  proc = run_script("provision.py", *_small(tmp_path), f"--config.sim.workload.trace="
                    f"{tmp_path / 'missing.csv'}", check=False)
  assert proc.returncode == 2 and "does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr


def _config(path: Path):
  return from_config_dict(ProvisionConfig, config_of(path))


def test_the_provision_configs_are_there():
  assert {p.stem for p in CONFIGS} >= {"hh_iso_power", "code_cost_optimal"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_provision_config_parses_and_has_candidates(path):
  cfg = _config(path)
  price = prices(cfg.space.kinds(cfg.design))
  if cfg.budget.kind != BudgetKind.ISO_THROUGHPUT:
    assert budget_layouts(cfg.design, cfg.space, cfg.budget, price)
  if path.stem == "hh_iso_power":
    assert cfg.design == Design.SPLIT and cfg.budget.power_w == pytest.approx(224e3)
  if path.stem == "code_cost_optimal":
    assert cfg.budget.rate == 70.0 and cfg.sim.workload.trace == "code"
