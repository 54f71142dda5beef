"""scripts/serve.py across processes (prompt instances in process 0, token
instances in process 1; or 2 + 2 processes) replays a trace slice with the
single-process tokens, and serves HTTP with them; SIGTERM on the launcher ends
an HTTP job with its files written; a killed token process ends the job in
bounded time, naming the requests it held, with the finished ones written
(every run has a timeout)."""

import csv
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from splitjax.config import from_config_dict
from splitjax.distributed.launch import free_port
from splitjax.serve_config import ServeConfig
from splitjax.workload import RequestSpec, prompt_token_ids
from tests.distributed.launcher import ROOT, launch
from tests.scripts.run_script import config_of, run_script

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
  # p0, p2 prompt; p1, p3 token (from the config): every KV transfer has two
  # bystanders that skip it
  # all arrivals within ~10 ms: the router must spread them over both prompt instances
  proc = launch(4, SERVE, *COMMON, f"--output_dir={tmp_path}", "--config.workload.rate_scale=1000",
                "--config.cluster.process_pools=prompt,token,prompt,token", cpu_devices=2,
                timeout_s=300)
  assert proc.returncode == 0, proc.stdout
  assert "4 processes (p0=prompt, p1=token, p2=prompt, p3=token)" in proc.stdout
  assert "prompt1    process 2 devices [0, 1]" in proc.stdout
  assert _tokens(tmp_path) == _tokens(single)
  rows = _rows(tmp_path)
  assert {r["status"] for r in rows} == {"completed"}
  assert {r["prompt_instance"] for r in rows} == {"prompt0", "prompt1"}


def _post(url: str, body: dict) -> dict:
  req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
  with urllib.request.urlopen(req, timeout=60) as r:
    return json.loads(r.read())


def _wait_healthy(url: str, proc, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert proc.poll() is None, "the job ended before serving"
    try:
      with urllib.request.urlopen(url + "/health", timeout=2) as r:
        if r.status == 200:
          return
    except OSError:
      time.sleep(1.0)
  raise AssertionError(f"no /health after {timeout_s} s")


def test_http_across_processes_then_sigterm_writes_the_files(single, tmp_path):
  cfg = from_config_dict(ServeConfig, config_of(ROOT / "configs" / "split.py"))
  port = free_port()
  cmd = [sys.executable, str(ROOT / "scripts" / "launch_local.py"), "-n=2", "--cpu_devices=4",
         "--timeout_s=300", "--", str(SERVE), "--config", str(ROOT / "configs" / "split.py"),
         f"--http_port={port}", f"--output_dir={tmp_path}", "--nowarmup"]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=ROOT, start_new_session=True)
  url = f"http://127.0.0.1:{port}"
  try:
    _wait_healthy(url, proc, 240)
    want = _tokens(single)
    for row in _rows(single)[:2]:       # the replay's prompts, greedy: the replay's tokens
      spec = RequestSpec(int(row["request_id"]), 0.0, int(row["prompt_tokens"]),
                         int(row["output_tokens"]))
      ids = prompt_token_ids(spec, cfg.model.vocab_size, cfg.prompt_seed)
      out = _post(url + "/v1/completions", {"model": cfg.model.name, "prompt": ids,
                                            "max_tokens": spec.output_tokens, "temperature": 0})
      assert out["choices"][0]["token_ids"] == want[spec.request_id]
    sampled = _post(url + "/v1/completions", {"model": cfg.model.name, "prompt": "hi",
                                              "max_tokens": 5, "temperature": 0.9})
    assert len(sampled["choices"][0]["token_ids"]) == 5
  finally:
    proc.send_signal(signal.SIGTERM)          # as Ctrl-C on the launcher
    stdout, _ = proc.communicate(timeout=60)
  assert "[p0] wrote" in stdout, stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["requests"]["completed"] == 3, stdout
