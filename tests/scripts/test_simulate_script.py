"""scripts/simulate.py end to end (subprocess): runs without jax, is deterministic,
and rejects bad input with a clear message."""

import json
from pathlib import Path

import pytest

from splitjax.sim.perf_model import default_profile_path
from tests.scripts.run_script import run_script

ROOT = Path(__file__).resolve().parents[2]
needs_profiles = pytest.mark.skipif(not default_profile_path().exists(),
                                    reason="needs ../shared/data/splitwise-profiles")


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
    _simulate(f"--config.workload.trace={trace}", "--config.cluster.prompt.machines=2",
              "--config.cluster.token.machines=1", f"--output_dir={out}")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("simulation")                      # wall-clock timings of the simulator
    outs.append(summary)
  assert outs[0] == outs[1]
  assert outs[0]["requests"]["submitted"] == outs[0]["requests"]["completed"] == 40
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
