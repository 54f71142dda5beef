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
  its next token comes at ``now`` or later, and each token after that at
  least one decode step later, a step of one row at the request's context
  being the shortest any machine of the cluster can run (``min_step_s``;
  decode and mixed step times grow with batch and context). So a pending
  request's last token comes at or after
  ``max(now, last + step) + (remaining - 1) x step``, which bounds its E2E and
  TBT = (last - first) / (output - 1) from below; TTFT >= now - arrival until
  the first token. Once enough judged requests have a slowdown bound above a
  limit that the percentile (linear interpolation over all judged requests, as
  :func:`splitjax.sim.slo.check`) must exceed it, the check fails whatever
  happens next.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from splitjax.metrics import RequestRecord, RequestStatus
from splitjax.sim.perf_model import PerfModel
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


_METRICS = (SLOMetric.TTFT, SLOMetric.TBT, SLOMetric.E2E)


class CertainVerdict:
  """``stop(now)`` for :meth:`splitjax.sim.driver.Simulator.run`: True once the
  SLO verdict on the judged requests cannot change any more.

  records: the simulator's request records (filled when the run starts).
  judged: the judged requests, with ``reference`` latencies in the same order.
  min_step_s: context length -> a lower bound on one decode step of a request
  at that context on any machine of the cluster (seconds; None: 0).
  every_s: look at most this often (simulated seconds; the verdict may come
  up to that late, never wrong). Cost per look: O(judged requests that have
  arrived and not ended).
  """

  def __init__(self, records: Mapping[int, RequestRecord], judged: Sequence[RequestSpec],
               reference: ReferenceLatencies, slo: SLOConfig,
               min_step_s: Callable[[int], float] | None = None, every_s: float = 0.0):
    if len(judged) != len(reference.ttft_s):
      raise ValueError(f"{len(judged)} judged requests but {len(reference.ttft_s)} references")
    self._records, self._judged, self._ref = records, judged, reference
    self._min_step = min_step_s if min_step_s is not None else (lambda context: 0.0)
    self._every_s, self._next_s = every_s, 0.0
    self._pending: list[_Pending] | None = None
    n_tbt = sum(s.output_tokens > 1 for s in judged)
    # Per metric (in _METRICS order): the limits, and how many judged requests
    # over each limit make its percentile exceed it.
    self._limits = [tuple(getattr(slo, m.value)) for m in _METRICS]
    self._enough = [[_needed(n_tbt if m == SLOMetric.TBT else len(judged), q)
                     for q in PERCENTILES] for m in _METRICS]
    self._over = [[0] * len(PERCENTILES) for _ in _METRICS]      # from ended requests
    # Why the verdict became certain; ``failing``: the check certain to fail
    # (e.g. "tbt_p50", "request 12 failed"), "" if none is.
    self.reason = self.failing = ""

  def __call__(self, now: float) -> bool:
    if now < self._next_s:
      return False
    self._next_s = now + self._every_s
    if self._pending is None:
      r = self._ref
      self._pending = sorted(
          (_Pending(self._records[s.request_id], float(a), float(b), float(c))
           for s, a, b, c in zip(self._judged, r.ttft_s, r.tbt_s, r.e2e_s)),
          key=lambda p: p.record.arrival_s)
    still, arrived = [], 0             # pending, by arrival; the first ``arrived`` came
    for i, p in enumerate(self._pending):
      rec = p.record
      if rec.arrival_s > now:          # nor did any later one
        still.extend(self._pending[i:])
        break
      if rec.status is RequestStatus.PENDING:
        still.append(p)
        arrived += 1
      elif rec.status is RequestStatus.COMPLETED:
        self._count(self._over, p, now)
      else:
        self.failing = f"request {rec.request_id} {rec.status.value}"
        self.reason = f"judged {self.failing}"
        return True
    self._pending = still
    if not still:
      self.reason = "every judged request ended"
      return True
    over = [list(v) for v in self._over]
    for p in still[:arrived]:
      self._count(over, p, now)
    for m, counts, needed, limits in zip(_METRICS, over, self._enough, self._limits):
      for q, k, n, limit in zip(PERCENTILES, counts, needed, limits):
        if k >= n:
          self.failing = f"{m.value}_p{q}"
          self.reason = (f"{m.value} slowdown over {limit:g}x for {k} of the judged requests "
                         f"by {now:.1f} s: {self.failing} is certain to fail")
          return True
    return False

  def _count(self, over: list, p: _Pending, now: float) -> None:
    """Adds ``p``'s slowdowns (final, or lower bounds at ``now``) over each limit."""
    rec = p.record
    first = rec.first_token_s
    if rec.status is RequestStatus.COMPLETED:
      end = rec.last_token_s
    else:                                 # the earliest its last token can come
      left = rec.output_tokens - rec.tokens
      step = self._min_step(rec.prompt_tokens + max(rec.tokens, 1))
      start = now if first is None else max(now, rec.last_token_s + step)
      end = start + (left - 1) * step
    ttft = ((first if first is not None else now) - rec.arrival_s) / p.ttft_s
    _add(over[0], self._limits[0], ttft)
    if rec.output_tokens > 1 and first is not None:
      _add(over[1], self._limits[1], (end - first) / (rec.output_tokens - 1) / p.tbt_s)
    _add(over[2], self._limits[2], (end - rec.arrival_s) / p.e2e_s)


def shortest_steps(models: Sequence[PerfModel], max_context: int) -> Callable[[int], float]:
  """``min_step_s`` for :class:`CertainVerdict` on a cluster of ``models``: the
  quickest one-row decode step at each context up to ``max_context`` (a table)."""
  contexts = np.arange(max_context + 1, dtype=np.float64)
  table = np.minimum.reduce([m.decode_step_times(1, contexts) for m in models]).tolist()
  return table.__getitem__


def _add(counts: list, limits: tuple, value: float) -> None:
  for j, limit in enumerate(limits):
    if value > limit:
      counts[j] += 1


def _needed(n: int, q: float) -> float:
  """Fewest of ``n`` values above a limit that put their linear-interpolated
  ``q``-th percentile above it (both interpolation points above it)."""
  if n == 0:
    return math.inf
  return n - math.floor((n - 1) * q / 100)
