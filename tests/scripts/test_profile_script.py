"""scripts/profile.py end to end (subprocess, tiny grid) and its planning helpers.

No assertion on speed: only the schema, the row count and positive times.
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from splitjax import profiling

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ("model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,"
          "prompt_time,token_time,e2e_time,tensor_parallel")
QUICK = ["--prompt_sizes", "16,32", "--batch_sizes", "1,2", "--token_size", "4",
         "--repeats", "1", "--config.engine.prefill_buckets=(16, 32, 64)",
         "--config.engine.max_cache_len=64"]


def _profile(*args, check=True):
  cmd = [sys.executable, str(ROOT / "scripts" / "profile.py"),
         "--config", str(ROOT / "configs" / "split.py"), *args]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_profile_writes_the_splitwise_schema(tmp_path):
  out = tmp_path / "sub" / "cpu_tiny.csv"    # the directory is created
  proc = _profile(*QUICK, "--hardware", "test-box", f"--output_csv={out}")
  lines = out.read_text().splitlines()
  assert lines[0] == SCHEMA
  rows = list(csv.DictReader(lines))
  assert [(int(r["prompt_size"]), int(r["batch_size"])) for r in rows] == [
      (16, 1), (16, 2), (32, 1), (32, 2)]
  for r in rows:
    assert (r["model"], r["hardware"], r["token_size"], r["tensor_parallel"]) == (
        "tiny", "test-box", "4", "2")
    assert r["peak_power"] == "" and r["average_power"] == ""     # not measured
    p, t, e = float(r["prompt_time"]), float(r["token_time"]), float(r["e2e_time"])
    assert p > 0 and t > 0
    assert e == pytest.approx(p + 3 * t)
  assert {int(r["batch_size"]) for r in rows if float(r["token_time"]) > 0} == {1, 2}
  assert "machine check:" in proc.stdout and "prompt_ms" in proc.stdout


def test_profile_reports_skipped_combos(tmp_path):
  out = tmp_path / "p.csv"
  proc = _profile("--prompt_sizes", "16,100", "--batch_sizes", "1,4", "--token_size", "2",
                  "--repeats", "2", "--max_batch_tokens", "32",
                  "--config.engine.prefill_buckets=(16, 64)",
                  "--config.engine.max_cache_len=64", f"--output_csv={out}")
  rows = list(csv.DictReader(out.open()))
  assert [(r["prompt_size"], r["batch_size"]) for r in rows] == [("16", "1")] * 2
  assert "skipped prompt 16 x batch 4: 64 batch tokens exceed --max_batch_tokens" in proc.stdout
  assert "skipped prompt 100 x batch 1: prompt exceeds the largest prefill bucket" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--prompt_sizes", "16,abc"], "--prompt_sizes: item 1 'abc' is not an integer"),
    (["--batch_sizes", "0"], "--batch_sizes: item 0 (0) must be positive"),
    (["--token_size", "1"], "--token_size must be >= 2"),
    (["--config.engine.decode_slotz=3"], "decode_slotz"),
    (["--slots", "some"], "--slots"),
])
def test_bad_flags_exit_2_without_traceback(args, message):
  proc = _profile(*args, check=False)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_output_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  proc = _profile(*QUICK, f"--output_csv={blocker / 'x.csv'}", check=False)
  assert proc.returncode == 2
  assert "cannot write --output_csv" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_skips_with_reasons():
  run, skipped = profiling.plan([16, 40, 200], [1, 8], 8, max_batch_tokens=256,
                                buckets=(16, 64, 256), max_cache_len=128)
  assert run == [profiling.Combo(16, 1, 16), profiling.Combo(16, 8, 16),
                 profiling.Combo(40, 1, 64)]
  reasons = {(s.prompt_size, s.batch_size): s.reason for s in skipped}
  assert "max_batch_tokens" in reasons[(40, 8)]
  assert "decode cache (128 positions" in reasons[(200, 1)]


def test_parse_sizes_sorts_and_names_bad_items():
  assert profiling.parse_sizes(["512", " 128", "512"], "--x") == (128, 512)
  with pytest.raises(ValueError, match="--x: item 1 '1.5' is not an integer"):
    profiling.parse_sizes(["4", "1.5"], "--x")
  with pytest.raises(ValueError, match="empty"):
    profiling.parse_sizes([], "--x")


def test_row_e2e_and_empty_power():
  row = profiling.ProfileRow("tiny", "h", 128, 4, 32, prompt_time=10.0, token_time=2.0,
                             tensor_parallel=2)
  d = row.to_csv()
  assert tuple(d) == profiling.COLUMNS
  assert d["e2e_time"] == 10.0 + 31 * 2.0 and d["peak_power"] == d["average_power"] == ""
