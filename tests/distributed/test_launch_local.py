"""scripts/launch_local.py with plain Python children (no JAX: fast)."""

import sys
import time

from tests.distributed.launcher import launch

PRINT_ENV = ("import os; print('id', os.environ['SPLITJAX_PROCESS_ID'], 'of', "
             "os.environ['SPLITJAX_NUM_PROCESSES'], os.environ['SPLITJAX_TRANSFER_ADDRESS'], "
             "os.environ['SPLITJAX_COORDINATOR_ADDRESS'])")


def test_children_get_coordinates_and_prefixed_output():
  proc = launch(3, sys.executable, "-c", PRINT_ENV, timeout_s=30)
  assert proc.returncode == 0, proc.stdout
  lines = {int(l[2]): l.split() for l in proc.stdout.splitlines() if l.startswith("[p")}
  assert sorted(lines) == [0, 1, 2]
  assert all(lines[i][1:5] == ["id", str(i), "of", "3"] for i in range(3))
  assert len({lines[i][5] for i in range(3)}) == 3          # one transfer port each
  assert len({lines[i][6] for i in range(3)}) == 1          # one coordinator


def test_first_failure_code_and_the_others_stopped():
  # process 1 fails at once; the others would sleep a minute
  code = ("import os, sys, time; i = int(os.environ['SPLITJAX_PROCESS_ID']); "
          "print('up', flush=True); time.sleep(0.5)\n"
          "if i == 1: sys.exit(5)\n"
          "time.sleep(60)")
  t = time.monotonic()
  proc = launch(3, sys.executable, "-c", code, timeout_s=60, grace_s=1)
  assert time.monotonic() - t < 20
  assert proc.returncode == 5, proc.stdout
  assert "[launch] p1 exited with code 5" in proc.stdout
  assert "p0 was killed by SIGTERM (stopped by the launcher)" in proc.stdout


def test_global_timeout():
  proc = launch(2, sys.executable, "-c", "import time; time.sleep(60)", timeout_s=2)
  assert proc.returncode == 124
  assert "timeout after 2 s" in proc.stdout
