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
  each token after the next comes at least one decode step after the one
  before, a step of one row at the request's context being the shortest any
  machine of the cluster can run (``min_step_s``; decode and mixed step times
  grow with batch and context). The next token is known exactly when a work
  in progress emits it (a leap may also have emitted tokens its record does
  not show yet: ``Simulator.in_flight``); otherwise it comes at
  ``max(now, last + step)`` or later. So a pending request's last token comes
  at or after ``next + (remaining - 1) x step``, which bounds its E2E and
  TBT = (last - first) / (output - 1) from below; TTFT >= now - arrival until
  the first token is known. Once enough judged requests have a slowdown bound
  above a limit that the percentile (linear interpolation over all judged
  requests, as :func:`splitjax.sim.slo.check`) must exceed it, the check fails
  whatever happens next;
- every SLO is certain to hold: within its limit even if every latency not
  known yet (of the pending judged requests) ends over it. This one assumes
  the pending judged requests complete, as they do unless the run is stopped:
  a simulation fails no request on its own (no faults are simulated, and a
  request stuck at the end is a scheduler bug: the runtime loop's and the
  simulator's property tests look for one, and found the mixed pool's
  stranded local prefill, since fixed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Protocol, Sequence

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
# Shortest steps are scaled by this in the bounds: the simulator adds step
# times one by one, a bound multiplies, and the two roundings may differ by a
# few ulps per step when the real steps are the shortest.
_SLACK = 1.0 - 1e-9


class SimulationView(Protocol):
  """What :class:`CertainVerdict` reads of a running simulation
  (:class:`splitjax.sim.driver.Simulator`)."""
  records: Mapping[int, RequestRecord]

  def in_flight(self, now: float) -> Mapping[int, tuple[int, float]]:
    """request id -> (tokens emitted before ``now`` that its record does not
    show yet, time of its next token, which is certain), for the requests a
    work in progress emits tokens for."""


class CertainVerdict:
  """``stop(now)`` for :meth:`splitjax.sim.driver.Simulator.run`: True once the
  SLO verdict on the judged requests cannot change any more; then ``passed``
  (every check certain to hold) or ``failing`` (a check or request certain to
  fail) says which.

  sim: the simulation (its records are filled when the run starts).
  judged: the judged requests, with ``reference`` latencies in the same order.
  min_step_s: context length -> a lower bound on one decode step of a request
  at that context on any machine of the cluster (seconds; None: 0).
  every_s: look at most this often (simulated seconds; the verdict may come
  up to that late, never wrong). Cost per look: O(judged requests that have
  not ended + requests in works in progress).
  """

  def __init__(self, sim: SimulationView, judged: Sequence[RequestSpec],
               reference: ReferenceLatencies, slo: SLOConfig,
               min_step_s: Callable[[int], float] | None = None, every_s: float = 0.0):
    if len(judged) != len(reference.ttft_s):
      raise ValueError(f"{len(judged)} judged requests but {len(reference.ttft_s)} references")
    self._sim, self._judged, self._ref = sim, judged, reference
    self._min_step = min_step_s if min_step_s is not None else (lambda context: 0.0)
    self._every_s, self._next_s = every_s, 0.0
    self._pending: list[_Pending] | None = None
    n = (len(judged), sum(s.output_tokens > 1 for s in judged), len(judged))
    # Per metric (in _METRICS order): the limits, how many judged requests over
    # each limit make its percentile exceed it, and how many at most leave it
    # within the limit.
    self._limits = [tuple(getattr(slo, m.value)) for m in _METRICS]
    self._enough = [[_needed(k, q) for q in PERCENTILES] for k in n]
    self._allowed = [[_allowed(k, q) for q in PERCENTILES] for k in n]
    self._over = [[0] * len(PERCENTILES) for _ in _METRICS]      # from ended requests
    # Why the verdict became certain; ``failing``: the check certain to fail
    # (e.g. "tbt_p50", "request 12 failed"), "" if none is.
    self.reason = self.failing = ""
    self.passed = False

  def __call__(self, now: float) -> bool:
    if now < self._next_s:
      return False
    self._next_s = now + self._every_s
    if self._pending is None:
      r, records = self._ref, self._sim.records
      self._pending = sorted(
          (_Pending(records[s.request_id], float(a), float(b), float(c))
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
        self._count(self._over, p, rec.first_token_s, rec.last_token_s, now)
      else:
        self.failing = f"request {rec.request_id} {rec.status.value}"
        self.reason = f"judged {self.failing}"
        return True
    self._pending = still
    if not still:
      self.reason = "every judged request ended"
      return True
    over = [list(v) for v in self._over]
    flight = self._sim.in_flight(now)
    ttft_known = list(self._over[0])  # over each TTFT limit, final values only
    ttft_open = len(still) - arrived  # pending TTFTs not known yet
    for p in still[:arrived]:
      rec = p.record
      first, end = self._bounds(rec, now, flight.get(rec.request_id))
      self._count(over, p, first, end, now)
      if first is None:
        ttft_open += 1
      else:
        _add(ttft_known, self._limits[0], (first - rec.arrival_s) / p.ttft_s)
    for m, counts, needed, limits in zip(_METRICS, over, self._enough, self._limits):
      for q, k, n, limit in zip(PERCENTILES, counts, needed, limits):
        if k >= n:
          self.failing = f"{m.value}_p{q}"
          self.reason = (f"{m.value} slowdown over {limit:g}x for {k} of the judged requests "
                         f"by {now:.1f} s: {self.failing} is certain to fail")
          return True
    tbt_open = sum(p.record.output_tokens > 1 for p in still)
    return self._surely_held((ttft_known, ttft_open), (self._over[1], tbt_open),
                             (self._over[2], len(still)))

  def _surely_held(self, *per_metric: tuple[list[int], int]) -> bool:
    """Whether each check holds even if every latency not known yet ends over
    its limit: per metric (in _METRICS order), the final values over each limit
    and how many are still open (TTFTs of pending requests count once known)."""
    for (counts, open_), allowed in zip(per_metric, self._allowed):
      if any(k + open_ > a for k, a in zip(counts, allowed)):
        return False
    self.passed = True
    self.reason = "every check is certain to hold (if the pending judged requests complete)"
    return True

  def _bounds(self, rec: RequestRecord, now: float,
              flight: tuple[int, float] | None) -> tuple[float | None, float]:
    """For a pending request at ``now``: (its first token's time if recorded or
    certain, else None; a lower bound on its last token's time).

    Tokens come one per decode step, each step at least ``min_step_s`` of the
    request's context (steps grow with batch and context). A work in progress
    (``flight``: tokens it emitted before ``now`` that the record lacks, the
    certain time of its next token) fixes the next token; otherwise that comes
    at ``now`` or later, and at least a step after the previous one."""
    first, tokens = rec.first_token_s, rec.tokens
    if flight is not None:
      done, nxt = flight
      tokens += done
      if first is None:
        first = nxt
    else:
      nxt = now if rec.last_token_s is None else max(
          now, rec.last_token_s + self._min_step(rec.prompt_tokens + tokens) * _SLACK)
    step = self._min_step(rec.prompt_tokens + max(tokens, 1)) * _SLACK
    return first, nxt + (rec.output_tokens - tokens - 1) * step

  def _count(self, over: list, p: _Pending, first: float | None, end: float,
             now: float) -> None:
    """Adds ``p``'s slowdowns (final, or lower bounds: its first token's time if
    known, else ``now``; ``end`` for its last token's) over each limit."""
    rec = p.record
    _add(over[0], self._limits[0], ((now if first is None else first) - rec.arrival_s) / p.ttft_s)
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


def _allowed(n: int, q: float) -> int:
  """Most of ``n`` values above a limit that keep their linear-interpolated
  ``q``-th percentile within it (both interpolation points within it)."""
  return n - 1 - math.ceil((n - 1) * q / 100)


def _needed(n: int, q: float) -> float:
  """Fewest of ``n`` values above a limit that put their linear-interpolated
  ``q``-th percentile above it (both interpolation points above it)."""
  if n == 0:
    return math.inf
  return n - math.floor((n - 1) * q / 100)
