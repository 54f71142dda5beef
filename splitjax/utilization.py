"""Busy time of instances by phase, in total and over time (pure Python + numpy).

Drivers report every finished iteration as an interval ``[start_s, end_s)`` on
an instance, with the kind of work it ran. :class:`BusyLedger` stores them
compactly (three typed arrays, O(1) per iteration) and, at the end, gives the
busy seconds per instance and kind, and per home pool the busy fraction in
total and over time. Idle time is the rest: per instance, busy + idle == the
run's length (instances run one iteration at a time).
"""

from __future__ import annotations

import array
import dataclasses
import math
from typing import Sequence

import numpy as np

from splitjax.scheduling.records import Instance, Work, WorkKind

_KINDS = tuple(WorkKind)
assert len(_KINDS) == 3, "BusyLedger.add codes three kinds of work"
_COLUMN = {k: j for j, k in enumerate(_KINDS)}


@dataclasses.dataclass(frozen=True)
class PoolUtilization:
  """One home pool over a run. Fractions are busy instance-seconds over
  machines x seconds; ``over_time`` has one value per ``window_s``."""
  machines: int
  busy_fraction: float
  busy_s: dict[str, float]          # by WorkKind value
  window_s: float
  over_time: list[float]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


class BusyLedger:
  """Iteration intervals of ``instances``; ``window_s``: finest time step."""

  def __init__(self, instances: Sequence[Instance], window_s: float):
    if window_s <= 0:
      raise ValueError("window_s must be positive")
    self.window_s = window_s
    self._names = [i.name for i in instances]
    self._homes = [i.home for i in instances]
    self._code = {(i.name, k): n * len(_KINDS) + j
                  for n, i in enumerate(instances) for j, k in enumerate(_KINDS)}
    self._codes, self._starts, self._ends = array.array("l"), array.array("d"), array.array("d")

  def add(self, index: int, kind: WorkKind, start_s: float, end_s: float) -> None:
    """Instance number ``index`` (in the order given) ran a ``kind`` iteration
    from ``start_s`` to ``end_s``."""
    j = 0 if kind is _KINDS[0] else 1 if kind is _KINDS[1] else 2
    self._codes.append(index * 3 + j)
    self._starts.append(start_s)
    self._ends.append(end_s)

  def add_works(self, works: Sequence[tuple[int, Work, float, float]]) -> None:
    """:meth:`add` for each ``(index, work, start_s, end_s)`` of ``works``, in bulk
    (a simulator's work observer)."""
    column = _COLUMN
    self._codes.extend([index * 3 + column[work.kind] for index, work, _, _ in works])
    self._starts.extend([start for _, _, start, _ in works])
    self._ends.extend([end for _, _, _, end in works])

  def _arrays(self):
    return (np.frombuffer(self._codes, dtype=np.int64) if self._codes else np.zeros(0, np.int64),
            np.asarray(self._starts, dtype=np.float64), np.asarray(self._ends, dtype=np.float64))

  def busy_s(self) -> dict[str, dict[WorkKind, float]]:
    """Busy seconds per instance and kind (kinds never run are left out)."""
    codes, starts, ends = self._arrays()
    sums = np.bincount(codes, weights=ends - starts, minlength=len(self._code))
    counts = np.bincount(codes, minlength=len(self._code))
    out: dict[str, dict[WorkKind, float]] = {n: {} for n in self._names}
    for (name, kind), c in self._code.items():
      if counts[c]:
        out[name][kind] = float(sums[c])
    return out

  def _windows(self, pool_codes: np.ndarray, fine: int) -> np.ndarray:
    """Busy seconds of the intervals whose code is in ``pool_codes`` per window."""
    codes, starts, ends = self._arrays()
    keep = np.isin(codes, pool_codes)
    starts, ends, w = starts[keep], ends[keep], self.window_s
    k0, k1 = (starts // w).astype(np.int64), (ends // w).astype(np.int64)
    one = k0 == k1
    size = max(fine, int(k1.max(initial=0))) + 2
    # Inside one window; else the head of the first window, the tail of the
    # last, and whole windows in between (a difference array).
    out = np.zeros(size)
    out += np.bincount(k0[one], weights=ends[one] - starts[one], minlength=size)
    a, b, s, e = k0[~one], k1[~one], starts[~one], ends[~one]
    out += np.bincount(a, weights=(a + 1) * w - s, minlength=size)
    out += np.bincount(b, weights=e - b * w, minlength=size)
    whole = np.bincount(a + 1, minlength=size) - np.bincount(b, minlength=size)
    out += np.cumsum(whole) * w
    return out[:fine]

  def pools(self, run_s: float, max_points: int = 120) -> dict[str, PoolUtilization]:
    """Per home pool (by role value) over ``[0, run_s)``; the time series is
    coarsened (whole windows merged) to at most ``max_points`` values."""
    fine = math.ceil(run_s / self.window_s) if run_s > 0 else 0
    merge = max(1, math.ceil(fine / max_points))
    step = merge * self.window_s
    busy = self.busy_s()
    out = {}
    for role in sorted(set(self._homes), key=lambda r: r.value):
      idx = [n for n, h in enumerate(self._homes) if h == role]
      by_kind: dict[str, float] = {}
      for n in idx:
        for kind, s in busy[self._names[n]].items():
          by_kind[kind.value] = by_kind.get(kind.value, 0.0) + s
      codes = np.array([n * len(_KINDS) + j for n in idx for j in range(len(_KINDS))])
      series = self._windows(codes, fine)
      over_time = []
      for k in range(math.ceil(fine / merge)):
        span = min(run_s, (k + 1) * step) - k * step
        over_time.append(float(math.fsum(series[k * merge:(k + 1) * merge])) / (len(idx) * span))
      frac = math.fsum(by_kind.values()) / (len(idx) * run_s) if run_s > 0 else 0.0
      out[role.value] = PoolUtilization(len(idx), frac, dict(sorted(by_kind.items())), step,
                                        over_time)
    return out
