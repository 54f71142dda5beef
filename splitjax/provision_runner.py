"""Where a provisioning search's evaluations run (no jax): from the probe cache
when every probe is there, else in a spawned worker process, or inline with
one worker (:class:`Runner`)."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
from pathlib import Path
from typing import Callable

from splitjax.provision_probe import CachedProbe, CacheMiss, Probe


class InlineExecutor:
  """``submit`` runs the call at once (one worker: no processes)."""

  def submit(self, fn, *args) -> cf.Future:
    future = cf.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:     # delivered by future.result(), as a pool would
      future.set_exception(e)
    return future

  def shutdown(self, wait: bool = True) -> None:
    del wait


class Runner:
  """Runs ``task(probe, *args)`` calls: first against the cache only (an
  offline :class:`CachedProbe`, no simulation), and if a probe is missing in
  a worker process (``workers`` > 1) or inline. ``progress`` gets lines."""

  def __init__(self, probe: Probe, workers: int, cache_dir: Path | None,
               progress: Callable[[str], None] | None):
    self.probe = CachedProbe(probe, Path(cache_dir)) if cache_dir else probe
    self.workers, self.progress = workers, progress
    self.done, self.total = 0, 0     # total: tasks of this pass (0: not known)
    self._executor = None

  def __enter__(self) -> Runner:
    return self

  def __exit__(self, *exc) -> None:
    if self._executor is not None:
      self._executor.shutdown(wait=True)

  def call(self, task: Callable, *args) -> cf.Future:
    """A future of ``(task(probe, *args), seconds)``, seconds None if the
    cache answered every probe."""
    if isinstance(self.probe, CachedProbe):
      offline = dataclasses.replace(self.probe, offline=True)
      try:
        value = task(offline, *args)
        return InlineExecutor().submit(lambda: (value, None))
      except CacheMiss:
        pass
    if self._executor is None:
      # Fresh interpreters ("spawn"), not fork: a forked copy of a process that
      # runs threads (e.g. one that imported jax) can deadlock.
      self._executor = (InlineExecutor() if self.workers <= 1 else cf.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context("spawn")))
    return self._executor.submit(timed, task, self.probe, *args)

  def report(self, line: str) -> None:
    """One finished task's progress line, counted."""
    self.done += 1
    if self.progress:
      count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
      self.progress(f"[{count}] {line}")


def timed(task: Callable, *args):
  """``(task(*args), seconds)`` (wall); runs in a worker process."""
  import time
  t0 = time.perf_counter()
  value = task(*args)
  return value, time.perf_counter() - t0
