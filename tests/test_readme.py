"""The README's Python examples run as written (on a tiny local checkpoint)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code: str, **replace) -> dict:
  # JAX is already initialised with 8 CPU devices by conftest.py
  code = "\n".join(line for line in code.splitlines() if "jax_num_cpu_devices" not in line)
  for old, new in replace.items():
    code = code.replace(old, new)
  scope: dict = {}
  exec(compile(code, str(README), "exec"), scope)
  return scope


def test_readme_engine_example_runs(hf_gqa_dir):
  scope = _run(_blocks()[0], **{"/path/to/hf-llama-dir": str(hf_gqa_dir)})
  tokens = scope["tokens"]
  assert len(tokens) == 16 and all(0 <= t < 512 for t in tokens)


def test_readme_cluster_example_runs():
  scope = _run(_blocks()[1])
  assert [len(t) for t in scope["tokens"]] == [8, 8]
  assert scope["result"].summary.completed == 2
