"""scripts/serve.py end to end, as a user runs it (subprocess, a tiny CSV trace)."""

import csv
import json
from pathlib import Path

import pytest

from tests.scripts.run_script import run_script

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--config.workload.max_prompt_tokens=60", "--config.workload.max_output_tokens=4",
         "--config.engine.prefill_buckets=(64, 128)", "--config.engine.max_cache_len=128",
         "--config.engine.decode_slots=4", "--progress=false"]


def _trace(path: Path, rows) -> Path:
  lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
  lines += [f"2023-11-16 18:15:{s:02d}.0000000,{p},{o}" for s, p, o in rows]
  path.write_text("\n".join(lines) + "\n")
  return path


def _serve(*args, check=True):
  return run_script("serve.py", *args, check=check, timeout=600)


@pytest.mark.parametrize("config", ["split", "colocated_chunked"])
def test_serve_writes_summary_and_one_row_per_request(tmp_path, config):
  trace = _trace(tmp_path / "t.csv", [(0, 30, 3), (0, 200, 9), (1, 12, 1), (1, 50, 5), (2, 7, 2)])
  out = tmp_path / "out"
  proc = _serve("--config", str(ROOT / "configs" / f"{config}.py"), *QUICK,
                f"--config.workload.trace={trace}", f"--output_dir={out}")
  summary = json.loads((out / "summary.json").read_text())
  req = summary["requests"]
  assert req["submitted"] == 5 and req["completed"] + req["failed"] == 5
  assert req["completed"] == 5
  for key in ("ttft_s", "tbt_s", "e2e_s", "queue_s"):
    assert set(summary[key]) == {"p50", "p90", "p99", "mean"}
  assert summary["throughput"]["requests_per_s"] > 0
  assert set(summary["transfer"]) == {"bytes", "seconds"}
  if config == "split":
    assert summary["transfer"]["bytes"] > 0
  rows = list(csv.DictReader((out / "requests.csv").open()))
  assert [int(r["request_id"]) for r in rows] == list(range(5))
  assert [int(r["generated_tokens"]) for r in rows] == [3, 4, 1, 4, 2]   # capped at 4
  assert (out / "timeline.csv").read_text().startswith("t_s,")
  times = [json.loads(line) for line in (out / "token_times.jsonl").read_text().splitlines()]
  assert [len(t["token_times_s"]) for t in times] == [3, 4, 1, 4, 2]
  assert "TTFT" in proc.stdout and "requests: 5 submitted, 5 completed" in proc.stdout


def test_serve_bad_input_is_a_clear_error(tmp_path):
  proc = _serve("--config", str(ROOT / "configs" / "split.py"), "--config.scheduler.polcy=x",
                check=False)
  assert proc.returncode != 0 and "polcy" in proc.stderr and "Traceback" not in proc.stderr
  bad = tmp_path / "bad.csv"
  bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00,10,2\noops,1\n")
  proc = _serve("--config", str(ROOT / "configs" / "split.py"), *QUICK,
                f"--config.workload.trace={bad}", check=False)
  assert proc.returncode == 2 and f"{bad}:3" in proc.stderr and "Traceback" not in proc.stderr
