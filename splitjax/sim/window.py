"""Judge a simulation on a window of its arrivals; stop it once the verdict is certain (no jax).

A probe's Poisson arrivals start on an empty cluster and stop at a horizon, so
requests near either end see less load than the steady state: queues are still
filling at the start and draining at the end. A probe therefore judges only
the requests arriving inside a middle window ``[start, end) x horizon``
(:class:`MeasureWindow`); the others just load the cluster.

:class:`CertainVerdict` lets the simulator stop as soon as more simulation can
no longer change the verdict on the judged requests, without approximation:

- every judged request has ended: later events cannot touch their records;
- a judged request failed or was rejected: the probe is infeasible;
- an SLO is certain to fail. Latencies only grow while a request is pending:
  TTFT >= now - arrival until the first token, E2E >= now - arrival until the
  last, and TBT = (last - first) / (output - 1) >= (now - first) / (output - 1).
  Once enough judged requests have a slowdown bound above a limit that the
  percentile (linear interpolation over all judged requests, as
  :func:`splitjax.sim.slo.check`) must exceed it, the check fails whatever
  happens next.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from splitjax.metrics import RequestRecord, RequestStatus
from splitjax.sim.sim_config import SLOConfig
from splitjax.sim.slo import PERCENTILES, ReferenceLatencies, SLOMetric
from splitjax.workload import RequestSpec


@dataclasses.dataclass(frozen=True)
class MeasureWindow:
  """Judged arrivals: from ``start`` to ``end`` x the arrival horizon (fractions;
  ``end`` = 1 includes the last arrival)."""
  start: float = 0.0
  end: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.start < self.end <= 1.0:
      raise ValueError(f"a measure window needs 0 <= start < end <= 1, got "
                       f"[{self.start}, {self.end})")

  @property
  def whole(self) -> bool:
    return self.start == 0.0 and self.end == 1.0

  def judged(self, specs: Sequence[RequestSpec], horizon_s: float) -> list[RequestSpec]:
    """The specs arriving inside the window of a ``horizon_s``-second arrival span."""
    if self.whole:
      return list(specs)
    lo, hi = self.start * horizon_s, self.end * horizon_s
    return [s for s in specs if lo <= s.arrival_s and (s.arrival_s < hi or self.end == 1.0)]


@dataclasses.dataclass
class _Pending:
  record: RequestRecord
  ttft_s: float          # reference latencies, seconds
  tbt_s: float           # NaN for 1-token outputs
  e2e_s: float


class CertainVerdict:
  """``stop(now)`` for :meth:`splitjax.sim.driver.Simulator.run`: True once the
  SLO verdict on the judged requests cannot change any more.

  records: the simulator's request records (filled when the run starts).
  judged: the judged requests, with ``reference`` latencies in the same order.
  Cost per call: O(judged requests still pending).
  """

  def __init__(self, records: Mapping[int, RequestRecord], judged: Sequence[RequestSpec],
               reference: ReferenceLatencies, slo: SLOConfig):
    if len(judged) != len(reference.ttft_s):
      raise ValueError(f"{len(judged)} judged requests but {len(reference.ttft_s)} references")
    self._records, self._judged, self._ref = records, judged, reference
    self._pending: list[_Pending] | None = None
    n_tbt = sum(s.output_tokens > 1 for s in judged)
    # Per metric: (limit, exceedances that make the percentile exceed it).
    self._limits = {m: [(limit, _needed(n_tbt if m == SLOMetric.TBT else len(judged), q))
                        for q, limit in zip(PERCENTILES, getattr(slo, m.value))]
                    for m in SLOMetric}
    self._over = {m: [0] * len(PERCENTILES) for m in SLOMetric}   # from ended requests
    # Why the verdict became certain; ``failing``: the check certain to fail
    # (e.g. "tbt_p50", "request 12 failed"), "" if none is.
    self.reason = self.failing = ""

  def __call__(self, now: float) -> bool:
    if self._pending is None:
      r = self._ref
      self._pending = [_Pending(self._records[s.request_id], float(a), float(b), float(c))
                       for s, a, b, c in zip(self._judged, r.ttft_s, r.tbt_s, r.e2e_s)]
    still = []
    for p in self._pending:
      status = p.record.status
      if status is RequestStatus.PENDING:
        still.append(p)
      elif status is RequestStatus.COMPLETED:
        self._count(self._over, p, now)
      else:
        self.failing = f"request {p.record.request_id} {status.value}"
        self.reason = f"judged {self.failing}"
        return True
    self._pending = still
    if not still:
      self.reason = "every judged request ended"
      return True
    over = {m: list(v) for m, v in self._over.items()}
    for p in still:
      self._count(over, p, now)
    for m, limits in self._limits.items():
      for q, (limit, needed), k in zip(PERCENTILES, limits, over[m]):
        if k >= needed:
          self.failing = f"{m.value}_p{q}"
          self.reason = (f"{m.value} slowdown over {limit:g}x for {k} of the judged requests "
                         f"by {now:.1f} s: {self.failing} is certain to fail")
          return True
    return False

  def _count(self, over: dict, p: _Pending, now: float) -> None:
    """Adds ``p``'s slowdowns (final, or lower bounds at ``now``) over each limit."""
    rec = p.record
    first, last = rec.first_token_s, rec.last_token_s
    done = rec.status is RequestStatus.COMPLETED
    ttft = ((first if first is not None else now) - rec.arrival_s) / p.ttft_s
    e2e = ((last if done else now) - rec.arrival_s) / p.e2e_s
    values = {SLOMetric.TTFT: ttft, SLOMetric.E2E: e2e}
    if rec.output_tokens > 1 and first is not None:
      values[SLOMetric.TBT] = ((last if done else now) - first) / (rec.output_tokens - 1) / p.tbt_s
    for m, v in values.items():
      counts = over[m]
      for j, (limit, _) in enumerate(self._limits[m]):
        if v > limit:
          counts[j] += 1


def _needed(n: int, q: float) -> float:
  """Fewest of ``n`` values above a limit that put their linear-interpolated
  ``q``-th percentile above it (both interpolation points above it)."""
  if n == 0:
    return math.inf
  return n - math.floor((n - 1) * q / 100)
