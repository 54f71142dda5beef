"""Run a program under scripts/launch_local.py from a test (a hang fails, never blocks)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch(n: int, *command, cpu_devices: int = 2, timeout_s: float = 120, grace_s: float = 10,
           heartbeat_timeout_s: int = 10) -> subprocess.CompletedProcess:
  """``launch_local.py -n N -- command...`` from the repo root; the launcher's own
  timeout is ``timeout_s`` and the test's is 30 s more."""
  cmd = [sys.executable, str(ROOT / "scripts" / "launch_local.py"), f"-n={n}",
         f"--cpu_devices={cpu_devices}", f"--timeout_s={timeout_s}", f"--grace_s={grace_s}",
         f"--heartbeat_timeout_s={heartbeat_timeout_s}", "--", *map(str, command)]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, cwd=ROOT)


def results(stdout: str) -> dict[int, dict]:
  """The ``RESULT {json}`` line of each process, by process id."""
  out = {}
  for line in stdout.splitlines():
    head, _, rest = line.partition(" RESULT ")
    if rest and head.startswith("[p"):
      out[int(head[2:-1])] = json.loads(rest)
  return out
