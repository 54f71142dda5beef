"""Run a script in scripts/ as a user would (subprocess from the repo root)."""

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
