"""scripts/generate.py end to end, as a user runs it (subprocesses)."""

import json
from pathlib import Path

import pytest

from tests import hf_models
from tests.scripts.run_script import run_script

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["1,2,3,4,5,6", "300,7,9", ",".join(str(i) for i in range(20, 90))]


def _run(*args, check=True):
  return run_script("generate.py", *args, check=check)


@pytest.fixture(scope="module")
def reference(hf_gqa_dir):
  hf = hf_models.load_hf(hf_gqa_dir)
  return [hf_models.hf_greedy(hf, [int(t) for t in p.split(",")], 10) for p in PROMPTS]


@pytest.mark.parametrize("mode,transfer", [("split", "layerwise"), ("split", "serialized"),
                                           ("single", "auto")])
def test_generate_matches_transformers(hf_gqa_dir, reference, tmp_path, mode, transfer):
  out = tmp_path / "out.json"
  args = ["--checkpoint", str(hf_gqa_dir), "--max_new_tokens", "10", "--mode", mode,
          "--transfer", transfer, "--output_json", str(out)]
  for p in PROMPTS:
    args += ["--prompt_ids", p]
  _run(*args)
  assert json.loads(out.read_text())["tokens"] == reference


@pytest.mark.parametrize("args,msg", [
    (["--prompt_ids", ""], "empty prompt"),
    (["--prompt_ids", "1,x,3"], "item 1 'x' is not an integer"),
    (["--prompt_ids", "1,999999"], "out of vocabulary"),
    (["--prompt_ids", ",".join(["1"] * 5000)], "exceeds"),
    (["--checkpoint", "/nonexistent/dir"], "does not exist"),
    (["--config.engine.decode_slotz=2"], "decode_slots"),
    (["--config.max_new_tokens=many"], "max_new_tokens"),
])
def test_bad_input_clear_error(args, msg):
  proc = _run(*args, "--max_new_tokens", "2", check=False)
  assert proc.returncode != 0
  assert msg in proc.stderr + proc.stdout
  assert "Traceback" not in proc.stderr, proc.stderr
