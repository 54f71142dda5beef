"""Clocks for the driver loop: the wall clock, or a virtual one (tests, simulation)."""

from __future__ import annotations

import time


class WallClock:
  """Seconds since construction (``time.perf_counter``); sleeping really sleeps."""

  def __init__(self):
    self._t0 = time.perf_counter()

  def now(self) -> float:
    return time.perf_counter() - self._t0

  def sleep_until(self, t: float) -> None:
    dt = t - self.now()
    if dt > 0:
      time.sleep(dt)


class VirtualClock:
  """Time that only moves when the driver sleeps: jumps straight to the wake-up."""

  def __init__(self, start: float = 0.0):
    self.t = start

  def now(self) -> float:
    return self.t

  def sleep_until(self, t: float) -> None:
    self.t = max(self.t, t)
