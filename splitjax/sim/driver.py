"""Discrete-event cluster simulation driving the real scheduling policies (no jax).

The same ``Coordinator`` (router, batchers, step policies, mixed pool) the real
runtime uses, on a virtual clock: a heap of events (arrivals, finished works,
landed KV transfers), and instances that ask a :class:`~splitjax.sim.perf_model.PerfModel`
how long a batch takes instead of running it. Only the instances an event
touches are asked for new work.

Leap mode: a decode batch whose membership cannot change, and which its step
policy would choose again (``Coordinator.repeats_decode``: not a mixed-pool
instance with prompts queued), is advanced across many iterations in one
event (each step's time still follows the perf model as contexts grow by one
token per step), up to the first request that finishes. If an event touches a leaping instance (a prompt or KV arriving
there, a role change) the leap is cut back to the iteration in progress, which
is exactly where the stepping mode would next ask the policy. Stepping mode
(``leap=False``) is the reference; tests check the two agree request by request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import heapq
import itertools
import math
from typing import Callable, Sequence

import numpy as np

from splitjax.metrics import (GapSample, RequestRecord, RequestStatus, add_decode_tokens,
                              summarize)
from splitjax.occupancy import pool_sample
from splitjax.runtime.loop import RunResult, admit
from splitjax.scheduling.coordinator import Coordinator
from splitjax.scheduling.records import Instance, Request, Work, WorkKind
from splitjax.sim.perf_model import PerfModel
from splitjax.utilization import BusyLedger
from splitjax.workload import RequestSpec

# Event kinds, also their order at equal times: a finished iteration before a
# landed transfer before an arrival (arrivals come from a sorted list, the
# others from the heap), then by instance / request id. This order does not
# depend on when events were pushed, so stepping and leaping (which push
# different events) process simultaneous events alike.
_DONE, _LANDED, _ARRIVAL = 0, 1, 2

# Members as module constants: reading a global is cheaper than an Enum class attribute.
_PREFILL, _DECODE, _MIXED = WorkKind.PREFILL, WorkKind.DECODE, WorkKind.MIXED
_COMPLETED = RequestStatus.COMPLETED
# Finished iterations gathered before the ledgers take them (bounds their memory).
_WORK_BATCH = 4096

# (request, prompt instance, token instance, prefill seconds)
#   -> (seconds from the prefill's end until the KV is usable, bytes moved)
TransferTime = Callable[[Request, Instance, Instance, float], tuple[float, int]]


@dataclasses.dataclass(eq=False, slots=True)
class _Running:
  """A work in flight. ``ends``: end time of each planned step (a list of one
  for single steps, an array for leaps); ``first`` / ``last``: its first and
  last entries as floats; ``version`` invalidates a heap entry after a cut."""
  work: Work
  ends: list[float] | np.ndarray
  first: float
  last: float
  version: int = 0


@contextlib.contextmanager
def _collector_paused():
  """Pauses Python's cyclic garbage collector (restored after). The event loop
  makes no reference cycles (a test checks), so the collector's passes over the
  live objects, which grow with the run, would only cost time (~5% here)."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


class Simulator:
  """Runs a workload through ``coord`` on a virtual clock.

  perf: instance name -> PerfModel. transfer: for a request moving between
  two instances, the KV's exposed transfer seconds (after the prefill ends)
  and bytes.
  check_memory: assert after every event that no instance holds more KV than
  it has (tests; costs time).
  keep_token_times: records list every token's time (tests); otherwise they
  keep first / last / count / longest gap, and inter-token gaps are kept as
  (gap, number of requests) runs, so memory does not grow with output tokens.
  """

  def __init__(self, coord: Coordinator, perf: dict[str, PerfModel], transfer: TransferTime,
               *, leap: bool = True, check_memory: bool = False, sample_every_s: float = 1.0,
               keep_token_times: bool = False):
    missing = [i.name for i in coord.instances if i.name not in perf]
    if missing:
      raise ValueError(f"no performance model for instances {missing}")
    self.coord, self.perf, self.transfer = coord, perf, transfer
    self.leap, self.check_memory, self.sample_every_s = leap, check_memory, sample_every_s
    self.keep_token_times = keep_token_times
    self.gaps = GapSample()
    self.busy = BusyLedger(coord.instances, sample_every_s)
    # Called with batches of finished iterations, each (instance index, work,
    # start_s, end_s) (``work.steps`` decode steps for a leap): every iteration
    # once, in the order they ended, all of them before ``run`` returns; e.g.
    # an energy ledger's ``observe_works`` (the list is reused: copy what you keep).
    self.work_observers: list[Callable[[list[tuple[int, Work, float, float]]], None]] = []
    self._works: list[tuple[int, Work, float, float]] = []     # not yet observed
    self._heap: list = []
    self._seq = itertools.count()
    self._running: dict[Instance, _Running] = {}
    self._index = {i: n for n, i in enumerate(coord.instances)}
    self.records: dict[int, RequestRecord] = {}
    self.now = 0.0
    self.events = 0            # events handled (stale leap ends excluded)
    self.stopped_s: float | None = None    # when run()'s ``stop`` ended the run

  # ------------------------------------------------------------------ run
  def run(self, specs: Sequence[RequestSpec],
          stop: Callable[[float], bool] | None = None) -> RunResult:
    """Simulates ``specs`` to the end, or until ``stop(t)`` (asked at every
    occupancy sample, ``t`` the sample's time) returns True: then requests not
    ended by then end FAILED, saying the run stopped (see ``sim.window``)."""
    for s in specs:
      if s.request_id in self.records:
        raise ValueError(f"duplicate request id {s.request_id}")
      self.records[s.request_id] = RequestRecord(
          s.request_id, s.arrival_s, s.prompt_tokens, s.output_tokens,
          token_times_s=[] if self.keep_token_times else None)
    # Arrivals are merged from a sorted list: at equal times they come after
    # heap events (finished iterations, landed transfers), by request id.
    arrivals = sorted(specs, key=lambda s: (s.arrival_s, s.request_id))
    with _collector_paused():
      timeline = self._loop(arrivals, stop)
    self._observe_works()
    self._fail_leftovers()
    records = [self.records[k] for k in sorted(self.records)]
    timeline.append(pool_sample(self.coord, self.now))
    return RunResult(records, summarize(records, self.now, itl=self.gaps.percentiles()),
                     timeline, list(self.coord.role_changes),
                     utilization=self.busy.pools(self.now))

  def _loop(self, arrivals: Sequence[RequestSpec], stop) -> list:
    """The event loop over ``arrivals`` (sorted) and the heap; the occupancy samples."""
    times = [s.arrival_s for s in arrivals] + [math.inf]
    heap, running, coord = self._heap, self._running, self.coord
    handle, settle, pop = self._handle, self._settle, heapq.heappop
    timeline, next_sample, a, last = [], 0.0, 0, len(arrivals)
    while True:
      if heap and heap[0][0] <= times[a]:
        t, kind, _, _, obj, version = pop(heap)
        if kind == _DONE:
          run = running.get(obj.instance)
          if run is None or run.work is not obj or run.version != version:
            continue                                # superseded by a cut leap
      elif a < last:
        obj, kind, t = arrivals[a], _ARRIVAL, times[a]
        a += 1
      else:
        break
      if next_sample <= t:
        next_sample = self._sample(timeline, next_sample, t, stop)
        if self.stopped_s is not None:
          break
      self.now, self.events = t, self.events + 1
      settle(handle(kind, obj))
      if self.check_memory:
        for i in coord.instances:
          assert i.kv.used_blocks <= i.kv.total_blocks, f"{i.name} over KV capacity at {t}"
    return timeline

  def _sample(self, timeline: list, next_sample: float, t: float, stop) -> float:
    """Occupancy samples due up to ``t`` (asking ``stop`` at each); the next one's time."""
    if len(self._works) >= _WORK_BATCH:
      self._observe_works()
    while next_sample <= t:
      timeline.append(pool_sample(self.coord, next_sample))
      if stop is not None and stop(next_sample):
        self._stop(next_sample)
        break
      next_sample += self.sample_every_s
    return next_sample

  def _observe_works(self) -> None:
    """Hands the iterations finished since the last call to the busy ledger and
    the work observers (at an occupancy sample once ``_WORK_BATCH`` have
    gathered, and at the end: one list append per iteration in the loop, the
    ledgers' arrays grow in bulk)."""
    works = self._works
    if works:
      self.busy.add_works(works)
      for observe in self.work_observers:
        observe(works)
      works.clear()

  def _settle(self, touched: Sequence[Instance]) -> None:
    """Asks the instances an event touched for work (in cluster order), then
    settles the mixed pool, asking the instances it moved, until nothing moves:
    new work can move the pool, so it settles before time moves on."""
    rebalance, kick = self.coord.rebalance, self._kick
    changes = rebalance()
    while touched or changes:
      if changes:
        by_name = self.coord.by_name
        touched = {*touched, *(by_name[c.instance] for c in changes)}
      if len(touched) > 1:
        touched = sorted(touched, key=self._index.__getitem__)
      for inst in touched:
        kick(inst)
      touched, changes = (), rebalance()

  def _push(self, t: float, kind: int, obj, tiebreak: int, version: int = 0) -> None:
    heapq.heappush(self._heap, (t, kind, tiebreak, next(self._seq), obj, version))

  # ------------------------------------------------------------------ events
  def _handle(self, kind: int, obj) -> Sequence[Instance]:
    """Applies one event; returns the instances it touched."""
    if kind == _DONE:
      return self._done(obj)
    by_name = self.coord.by_name
    if kind == _ARRIVAL:
      # Only the prompt side can act on an arrival: no step policy looks at a
      # token instance's ``incoming`` (the request joins its decode queue when
      # its KV lands), so a leap there need not be cut.
      r = admit(self.coord, obj, self.records[obj.request_id])
      return () if r is None else (by_name[r.prompt_instance],)
    r = obj                                            # _LANDED
    rec = self.records[r.request_id]
    rec.transfer_s = self.now - rec.first_token_s
    self.coord.transfer_done(r)
    return by_name[r.token_instance], by_name[r.prompt_instance]

  def _done(self, work: Work) -> tuple[Instance]:
    inst = work.instance
    run = self._running.pop(inst)
    ends, first, last, start = run.ends, run.first, run.last, work.started_s
    self._works.append((self._index[inst], work, start, last))
    done = self.coord.complete(work)
    records = self.records
    if work.decode:
      self._decoded(work, done.emitted, ends, first, last)
    else:                                # prefill: every emitted token is a first token
      for r in done.emitted:
        records[r.request_id].add_token(last)
    for r in done.finished:
      rec = records[r.request_id]
      rec.preemptions = r.preemptions
      rec.finish(_COMPLETED)
    if done.transfers:
      by_name, now = self.coord.by_name, self.now
      for r in done.transfers:
        seconds, nbytes = self.transfer(r, inst, by_name[r.token_instance], last - start)
        records[r.request_id].transfer_bytes = nbytes
        self._push(now + seconds, _LANDED, r, r.request_id)
    return (inst,)

  def _decoded(self, work: Work, emitted: list, ends, first: float, last: float) -> None:
    """Token times of a step (or leap) with decode rows: each decode row got
    ``work.steps`` tokens at ``ends``; a request whose last chunk ran got its
    first token at the end. Gaps go to ``self.gaps``: the in-leap ones once,
    weighted by the rows."""
    n, records, gaps = work.steps, self.records, self.gaps
    if n > 1:
      diffs = ends[1:] - ends[:-1]
      inner = float(np.maximum.reduce(diffs))
      times = ends.tolist() if self.keep_token_times else None
    else:
      diffs, inner, times = None, 0.0, None
    if not work.chunks and not self.keep_token_times:   # every emitted request: a decode row
      rows = len(emitted)
      since = add_decode_tokens([records[r.request_id] for r in emitted], first, last, n, inner)
      for prev, count in since.items():  # a row's gap into this step, once per distinct start
        gaps.add_value(first - prev, count)
      if diffs is not None:
        gaps.add(diffs, rows)
      return
    # Every emitted request is a decode row unless prompt chunks finished here.
    decode = {id(r) for r in work.decode} if work.chunks else None
    rows, since = 0, {}                  # previous token time -> rows (usually one or two)
    for r in emitted:
      rec = records[r.request_id]
      prev = rec.last_token_s
      if decode is None or id(r) in decode:
        rows += 1
        since[prev] = since.get(prev, 0) + 1
        rec.add_tokens(first, last, n, inner, times)
      else:
        if prev is not None:
          gaps.add_value(last - prev)
        rec.add_token(last)
    for prev, count in since.items():    # a row's gap into this step, once per distinct start
      gaps.add_value(first - prev, count)
    if diffs is not None:
      gaps.add(diffs, rows)

  # ------------------------------------------------------------------ work
  def _kick(self, inst: Instance) -> None:
    """Asks an idle instance for work; cuts a leap an event may have changed."""
    run = self._running.get(inst)
    if run is not None:
      self._cut(run)
      return
    now = self.now
    work = self.coord.next_work(inst, now)
    if work is None:
      return
    records = self.records
    for r in work.prefill:
      records[r.request_id].scheduled_s = now
    for c in work.chunks:
      if c.start == 0:
        records[c.request.request_id].scheduled_s = now
    ends = self._plan(work)
    work.steps = n = len(ends)
    first, last = (ends[0], ends[-1]) if n == 1 else (ends.item(0), ends.item(-1))
    self._running[inst] = _Running(work, ends, first, last)
    heapq.heappush(self._heap, (last, _DONE, self._index[inst], next(self._seq), work, 0))

  def _plan(self, work: Work) -> list[float] | np.ndarray:
    """End time of each step: one for a prefill / mixed step or a single decode
    step, an array for a leap over many decode steps."""
    perf = self.perf[work.instance.name]
    if work.kind is _PREFILL:
      return [self.now + perf.prefill_time([r.prompt_tokens for r in work.prefill])]
    decode = work.decode
    if work.kind is _MIXED:
      chunks = [(c.start, c.end - c.start) for c in work.chunks]
      return [self.now + perf.mixed_time([r.prompt_tokens + r.generated for r in decode],
                                         chunks)]
    batch, total = len(decode), sum([r.prompt_tokens + r.generated for r in decode])
    steps = (min([r.output_tokens - r.generated for r in decode])
             if self.leap and self.coord.repeats_decode(work.instance) else 1)
    if steps == 1:
      return [self.now + perf.decode_step_time(batch, total)]
    # Every context grows by one token per step. Accumulating [now + d0, d1, ...]
    # left to right gives the very floats stepping computes (now + d0) + d1 ...
    ends = perf.decode_step_times(batch, np.arange(total, total + batch * steps, batch,
                                                   dtype=np.float64))
    ends[0] = self.now + ends.item(0)
    return np.add.accumulate(ends, out=ends)

  def _cut(self, run: _Running) -> None:
    """Shortens a leap to the step in progress (where stepping would re-plan)."""
    work = run.work
    if work.kind is not _DECODE or len(run.ends) == 1:
      return
    # Stepping would have ended an iteration finishing exactly now before this
    # event and started the next one: keep through the first step ending later.
    keep = int(run.ends.searchsorted(self.now, side="right")) + 1
    if keep >= len(run.ends):
      return
    run.ends = run.ends[:keep]
    run.last = run.ends.item(-1)
    work.steps = keep
    run.version += 1
    self._push(run.last, _DONE, work, self._index[work.instance], run.version)

  def in_flight(self, now: float) -> dict[int, tuple[int, float]]:
    """What the records do not show yet at ``now`` (between events): request id
    -> (tokens emitted before ``now`` by a leap still running, the time of its
    next token), for each request that gets a token from a work in progress.
    That next token is certain: a cut keeps the step in progress."""
    out = {}
    for run in self._running.values():
      work, ends = run.work, run.ends
      if len(ends) == 1:
        k, nxt = 0, run.first
      else:
        k = int(ends.searchsorted(now, side="left"))    # steps that ended before now
        nxt = ends.item(k)
      for r in work.decode:
        out[r.request_id] = (k, nxt)
      for r in work.prefill:
        out[r.request_id] = (0, nxt)
      for c in work.chunks:
        if c.last:
          out[c.request.request_id] = (0, nxt)
    return out

  def _stop(self, t: float) -> None:
    """Ends the run at ``t``: whatever has not ended fails, saying so."""
    self.now = self.stopped_s = t
    reason = f"not simulated to the end: the run stopped at {t:.3f} s"
    for r in list(self.coord.requests_in_flight()):
      self.coord.fail(r, reason)
    for rec in self.records.values():
      if rec.status is RequestStatus.PENDING:
        rec.finish(RequestStatus.FAILED, reason)

  def _fail_leftovers(self) -> None:
    for r in list(self.coord.requests_in_flight()):
      self.coord.fail(r, "could not be scheduled")
      self.records[r.request_id].finish(
          RequestStatus.FAILED, f"could not be scheduled (stuck in phase {r.phase.value})")
