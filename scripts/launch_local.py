"""Start an N-process JAX job on this machine (a stand-in for N hosts).

  python scripts/launch_local.py -n 2 -- scripts/generate.py --mode split ...

Each child gets the ``SPLITJAX_*`` variables of ``splitjax.distributed.launch``:
the coordinator address (process 0 hosts it, on a free port), its process id
and count, its own cross-host transfer port and its own CPU devices
(``--cpu_devices``). A ``*.py`` command runs with this interpreter. Output is
forwarded line by line as ``[p<i>] ...``.

If a child fails, the others get ``--grace_s`` to notice and report on their
own (they watch each other's heartbeats), then are terminated; the launcher
exits with the first failing child's code (128 + signal for a signal). After
``--timeout_s`` everything is killed and the exit code is 124.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax.distributed.launch import DistributedSpec, free_port  # noqa: E402

_N = flags.DEFINE_integer("n", 2, "Number of processes.", lower_bound=1)
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 4, "Virtual CPU devices per process.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 600.0, "Kill everything after this many seconds.")
_TERM = flags.DEFINE_float("term_grace_s", 10.0, "When stopping the children: seconds between "
                           "SIGTERM (a serving process 0 then writes its files and stops the "
                           "others) and SIGKILL.")
_GRACE = flags.DEFINE_float("grace_s", 20.0, "After a child fails, seconds the others get to "
                            "exit on their own before they are terminated.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 10, "Seconds of silence after which "
                                  "the processes count a peer as dead.")
_HOST = "127.0.0.1"
TIMEOUT_EXIT = 124


def child_env(process_id: int, n: int, coordinator_port: int) -> dict[str, str]:
  """The environment of child ``process_id``: ours plus its SPLITJAX_* coordinates."""
  spec = DistributedSpec(coordinator_address=f"{_HOST}:{coordinator_port}", num_processes=n,
                         process_id=process_id, transfer_address=f"{_HOST}:{free_port(_HOST)}",
                         cpu_devices=_CPU_DEVICES.value,
                         heartbeat_timeout_s=_HEARTBEAT.value)
  return {**os.environ, **spec.env(), "PYTHONUNBUFFERED": "1"}


def forward(i: int, stream, lock: threading.Lock) -> None:
  """Copies a child's output to ours line by line with a [p<i>] prefix."""
  for raw in iter(stream.readline, b""):
    line = raw.decode(errors="replace").rstrip("\n")
    with lock:
      print(f"[p{i}] {line}", flush=True)
  stream.close()


def exit_code(returncode: int) -> int:
  """A child's return code as a shell exit code (signal k -> 128 + k)."""
  return 128 - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
  if returncode < 0:
    return f"was killed by {signal.Signals(-returncode).name}"
  return f"exited with code {returncode}"


def stop(procs: list[subprocess.Popen]) -> None:
  """SIGTERM to every live child's process group, SIGKILL ``--term_grace_s`` later."""
  for sig, wait_s in ((signal.SIGTERM, _TERM.value), (signal.SIGKILL, 0.0)):
    live = [p for p in procs if p.poll() is None]
    for p in live:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    end = time.monotonic() + wait_s
    while time.monotonic() < end and any(p.poll() is None for p in live):
      time.sleep(0.05)


def supervise(procs: list[subprocess.Popen], lock: threading.Lock) -> int:
  """Waits for the children (see module doc); returns the launcher's exit code."""
  start = time.monotonic()
  first_failure: int | None = None
  stop_at = float("inf")
  reported: set[int] = set()
  while any(p.poll() is None for p in procs):
    now = time.monotonic()
    for i, p in enumerate(procs):
      rc = p.poll()
      if rc is not None and rc != 0 and i not in reported:
        reported.add(i)
        with lock:
          print(f"[launch] p{i} {describe(rc)}", flush=True)
        if i == 0:
          with lock:
            print("[launch] p0 hosts the coordination service: the others cannot go on "
                  "without it (JAX ends them)", flush=True)
        if first_failure is None:
          first_failure = exit_code(rc)
          stop_at = now + _GRACE.value
          with lock:
            print(f"[launch] giving the other processes {_GRACE.value:.0f} s to report, "
                  "then stopping them", flush=True)
    if now > stop_at:
      with lock:
        print("[launch] stopping the remaining processes", flush=True)
      stop(procs)
    elif now - start > _TIMEOUT.value:
      with lock:
        print(f"[launch] timeout after {_TIMEOUT.value:.0f} s: stopping every process", flush=True)
      stop(procs)
      return TIMEOUT_EXIT
    time.sleep(0.05)
  for i, p in enumerate(procs):
    if p.returncode != 0 and i not in reported:
      by_us = " (stopped by the launcher)" if now > stop_at else ""
      print(f"[launch] p{i} {describe(p.returncode)}{by_us}", flush=True)
      first_failure = first_failure if first_failure is not None else exit_code(p.returncode)
  return first_failure or 0


def main(argv):
  command = argv[1:]
  if not command:
    print("usage: launch_local.py -n N -- script.py [args...]", file=sys.stderr)
    return 2
  if command[0].endswith(".py"):
    command = [sys.executable] + command
  n, port = _N.value, free_port(_HOST)
  lock = threading.Lock()
  procs, threads = [], []
  print(f"[launch] {n} processes, coordinator {_HOST}:{port}, {_CPU_DEVICES.value} CPU devices "
        f"each: {' '.join(command)}", flush=True)
  for i in range(n):
    p = subprocess.Popen(command, env=child_env(i, n, port), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    print(f"[launch] p{i} pid {p.pid}", flush=True)
    t = threading.Thread(target=forward, args=(i, p.stdout, lock), daemon=True)
    t.start()
    threads.append(t)
  def on_signal(signum, frame):
    stop(procs)
    sys.exit(128 + signum)
  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  code = supervise(procs, lock)
  for t in threads:
    t.join(timeout=2.0)
  print(f"[launch] done, exit code {code}", flush=True)
  return code


if __name__ == "__main__":
  app.run(main)
