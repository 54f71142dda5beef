"""scripts/serve.py across processes (prompt instances in process 0, token
instances in process 1) replays a trace slice with the single-process tokens;
a killed token process ends the job in bounded time, naming the requests it
held, with the finished ones written (every run has a timeout)."""

import csv
import json
import time

import pytest

from tests.distributed.launcher import ROOT, launch
from tests.scripts.run_script import run_script

SERVE = ROOT / "scripts" / "serve.py"
# 9 requests of the conversation trace, prompts <= 256 tokens, 8 tokens out.
COMMON = ["--config", str(ROOT / "configs" / "split.py"), "--config.workload.duration_s=10",
          "--config.workload.max_prompt_tokens=256", "--config.workload.max_output_tokens=8",
          "--noprogress", "--nowarmup"]


def _tokens(out) -> dict[int, list[int]]:
  lines = (json.loads(x) for x in (out / "token_times.jsonl").read_text().splitlines())
  return {d["request_id"]: d["token_ids"] for d in lines}


def _rows(out) -> list[dict]:
  with open(out / "requests.csv") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  out = tmp_path_factory.mktemp("single")
  run_script("serve.py", *COMMON, f"--output_dir={out}")
  return out


def test_two_process_replay_equals_single_process(single, tmp_path):
  proc = launch(2, SERVE, *COMMON, f"--output_dir={tmp_path}", cpu_devices=4, timeout_s=240)
  assert proc.returncode == 0, proc.stdout
  assert "2 processes (p0=prompt, p1=token)" in proc.stdout
  assert "token0     process 1 devices [0, 1]" in proc.stdout
  want = _tokens(single)
  assert len(want) >= 5 and all(len(t) > 0 for t in want.values())
  assert _tokens(tmp_path) == want
  rows = _rows(tmp_path)
  assert {r["status"] for r in rows} == {"completed"}
  assert all(int(r["transfer_bytes"]) > 0 for r in rows if int(r["output_tokens"]) > 1)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["requests"]["completed"] == len(want)
  assert "[p1] wrote" not in proc.stdout                       # only process 0 writes


def test_killed_token_process_is_reported_and_finished_requests_kept(single, tmp_path):
  t = time.monotonic()
  proc = launch(2, SERVE, *COMMON, f"--output_dir={tmp_path}", "--fault_process=1",
                "--fault_after_ops=30", cpu_devices=4, heartbeat_timeout_s=3, grace_s=10,
                timeout_s=240)
  assert time.monotonic() - t < 200, proc.stdout
  assert proc.returncode != 0, proc.stdout
  assert "[p1] process 1: injecting fault" in proc.stdout
  assert "[p0] error: process(es) [1] stopped heart-beating" in proc.stdout
  assert "requests in flight on process 1 (token pool): [" in proc.stdout
  rows = _rows(tmp_path)
  want = _tokens(single)
  assert len(rows) == len(want)                               # nothing silently dropped
  got = _tokens(tmp_path)
  done = [int(r["request_id"]) for r in rows if r["status"] == "completed"]
  lost = [r for r in rows if r["status"] != "completed"]
  assert lost and all(r["status"] == "failed" and "stopped heart-beating" in r["reason"]
                      for r in lost)
  assert done and all(got[i] == want[i] for i in done)


def test_four_processes_one_instance_each(single, tmp_path):
  # p0, p1 prompt; p2, p3 token: every KV transfer has two bystanders that skip it
  # all arrivals within ~10 ms: the router must spread them over both prompt instances
  proc = launch(4, SERVE, *COMMON, f"--output_dir={tmp_path}", "--config.workload.rate_scale=1000",
                cpu_devices=2, timeout_s=300)
  assert proc.returncode == 0, proc.stdout
  assert "4 processes (p0=prompt, p1=prompt, p2=token, p3=token)" in proc.stdout
  assert _tokens(tmp_path) == _tokens(single)
  rows = _rows(tmp_path)
  assert {r["status"] for r in rows} == {"completed"}
  assert {r["prompt_instance"] for r in rows} == {"prompt0", "prompt1"}
