"""Run a script in scripts/ as a user would (subprocess from the repo root)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args, check: bool = True, timeout: float = 300):
  """``python scripts/<name> args...``; raises with its output if ``check`` and it fails."""
  cmd = [sys.executable, str(ROOT / "scripts" / name), *args]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


def config_of(path: Path):
  """``get_config()`` of the config file at ``path`` (an ml_collections ConfigDict)."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
