"""The README's Python example runs as written (on a tiny local checkpoint)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(hf_gqa_dir):
  (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  # JAX is already initialised with 8 CPU devices by conftest.py
  code = "\n".join(line for line in code.splitlines() if "jax_num_cpu_devices" not in line)
  code = code.replace("/path/to/hf-llama-dir", str(hf_gqa_dir))
  scope: dict = {}
  exec(compile(code, str(README), "exec"), scope)
  tokens = scope["tokens"]
  assert len(tokens) == 16 and all(0 <= t < 512 for t in tokens)
