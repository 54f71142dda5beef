"""scripts/generate.py across processes == one process; a dead or stopped process
ends the job with a clear message in bounded time (every run has a timeout)."""

import json
import time

import pytest

from tests.distributed.launcher import ROOT, launch
from tests.scripts.run_script import run_script

# Six requests in waves of two (decode_slots=2): three waves; the 70-token prompt
# goes layer-wise (layerwise_min_tokens=32), the others serialized.
PROMPTS = ["1,2,3,4,5,6", "300,7,9", ",".join(str(i) for i in range(20, 90)), "5", "42,42,42",
           "7,8,9,10"]
COMMON = ["--max_new_tokens=6", "--config.engine.decode_slots=2",
          "--config.engine.layerwise_min_tokens=32", "--nowarmup"]
GENERATE = ROOT / "scripts" / "generate.py"


def _args(checkpoint, out, *extra, prompts=PROMPTS):
  args = ["--checkpoint", str(checkpoint), "--output_json", str(out), *COMMON, *extra]
  for p in prompts:
    args += ["--prompt_ids", p]
  return args


@pytest.fixture(scope="module")
def single_tokens(hf_gqa_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("single") / "out.json"
  run_script("generate.py", *_args(hf_gqa_dir, out, "--mode=single"))
  return json.loads(out.read_text())["tokens"]


def test_two_processes_equal_single_process(hf_gqa_dir, single_tokens, tmp_path):
  out = tmp_path / "out.json"
  proc = launch(2, GENERATE, *_args(hf_gqa_dir, out, "--mode=split"))
  assert proc.returncode == 0, proc.stdout
  assert json.loads(out.read_text())["tokens"] == single_tokens
  assert "2 processes (p0=prompt, p1=token)" in proc.stdout
  assert "[p1] wrote" not in proc.stdout                      # only process 0 writes


def test_four_processes_two_prompt_two_token(hf_gqa_dir, single_tokens, tmp_path):
  out = tmp_path / "out.json"
  # 4 waves (decode_slots=2, 8 requests): every (prompt, token) process pair serves one
  args = _args(hf_gqa_dir, out, "--mode=split", prompts=PROMPTS + ["11,12", "13"])
  proc = launch(4, GENERATE, *args, timeout_s=180)
  assert proc.returncode == 0, proc.stdout
  tokens = json.loads(out.read_text())["tokens"]
  assert tokens[:6] == single_tokens and len(tokens) == 8
  for p in (2, 3):
    assert proc.stdout.count(f"[p{p}] process {p}: wave") == 2


@pytest.mark.parametrize("fault,code", [("kill", 128 + 9), ("stop", 3)])
def test_token_process_fault_reported_in_bounded_time(hf_gqa_dir, single_tokens, tmp_path,
                                                      fault, code):
  out = tmp_path / "out.json"
  t = time.monotonic()
  proc = launch(2, GENERATE, *_args(hf_gqa_dir, out, "--mode=split", f"--fault={fault}",
                                    "--fault_process=1", "--fault_after_wave=0"),
                heartbeat_timeout_s=3, grace_s=5, timeout_s=90)
  assert time.monotonic() - t < 60, proc.stdout
  assert proc.returncode == code, proc.stdout
  assert "[p0] error: process(es) [1] stopped heart-beating" in proc.stdout
  assert "requests in flight on process 1 (token pool): [2, 3, 4, 5]" in proc.stdout
  written = json.loads(out.read_text())
  assert written["tokens"][:2] == single_tokens[:2]           # wave 0 was completed
  assert written["tokens"][2:] == [None] * 4
  assert written["lost"] == {"1": [2, 3, 4, 5]}


def test_coordinator_death_ends_every_process(hf_gqa_dir, tmp_path):
  t = time.monotonic()
  proc = launch(2, GENERATE, *_args(hf_gqa_dir, tmp_path / "out.json", "--mode=split",
                                    "--fault=kill", "--fault_process=0", "--fault_after_wave=0"),
                heartbeat_timeout_s=3, grace_s=20, timeout_s=90)
  assert time.monotonic() - t < 60, proc.stdout
  assert proc.returncode == 128 + 9, proc.stdout
  assert "p0 hosts the coordination service" in proc.stdout
  # JAX's runtime ends process 1 itself (well within the grace period)
  assert "p1 was killed by SIGABRT" in proc.stdout, proc.stdout


def test_bad_input_stops_every_process_at_once():
  t = time.monotonic()
  proc = launch(2, GENERATE, "--prompt_ids=1,999999", "--max_new_tokens=2")
  assert time.monotonic() - t < 60
  assert proc.returncode == 2, proc.stdout
  assert proc.stdout.count("out of vocabulary") == 2          # each process says why
  assert "Traceback" not in proc.stdout
