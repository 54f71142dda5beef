"""The driver loop: arrivals on a clock -> coordinator -> executor -> records.

One thread, asynchronous dispatch. Each pass: admit the requests that have
arrived, apply the executor's events (finished work, landed transfers) to the
coordinator, let the mixed pool rebalance, launch the next Work on every idle
instance, sample occupancy, then sleep until the next arrival or event. JAX
dispatch returns immediately, so all instances' programs run concurrently
while this loop only polls for readiness; policy state is touched by this one
thread only (no locks). Works with the wall clock and real programs
(``JaxExecutor``) or a virtual clock and the ``FakeExecutor``.

Faults (``runtime.faults``): ``Run.fail_instance`` takes an instance down and
resubmits every request it touched; a failed KV transfer is retried up to
``transfer_retries`` times, then its request is resubmitted. A resubmitted
request keeps its record (tokens so far, first-token time) and is recomputed
from its prompt plus those tokens; if nothing can take it, it fails with the
reason.

No jax here: the simulator can drive the same loop.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

from splitjax.metrics import PoolSample, RequestRecord, RequestStatus, Summary, summarize
from splitjax.occupancy import pool_sample
from splitjax.runtime.executor import (Executor, TransferDone, TransferFailed, WorkDone,
                                       WorkFailed)
from splitjax.runtime.faults import FaultEvent, InstanceFailure, InstanceFault
from splitjax.scheduling.coordinator import Coordinator
from splitjax.scheduling.mixed_pool import RoleChange
from splitjax.scheduling.records import Phase, Request, Role, Work
from splitjax.utilization import PoolUtilization
from splitjax.workload import RequestSpec


@dataclasses.dataclass
class RunResult:
  """Everything a replay produced. ``records`` are in request-id order."""
  records: list[RequestRecord]
  summary: Summary
  timeline: list[PoolSample]
  role_changes: list[RoleChange]
  # Programs compiled while the clock ran (each stalls the loop), and their
  # seconds; filled by drivers that compile (runtime.Cluster).
  compiles: int = 0
  compile_s: float = 0.0
  # Busy time per home pool (by role value) and over time, where the driver
  # measured it (the simulator).
  utilization: dict[str, PoolUtilization] | None = None
  # Fault counts by FaultEvent value (drivers that inject faults).
  faults: dict[str, int] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    """summary.json: :meth:`Summary.to_dict` plus occupancy and mixed-pool counts."""
    d = self.summary.to_dict()
    tl = self.timeline
    mean = lambda f: sum(getattr(s, f) for s in tl) / len(tl) if tl else 0.0
    peak = lambda f: max((getattr(s, f) for s in tl), default=0)
    d["occupancy"] = {f: {"mean": mean(f), "max": peak(f)} for f in (
        "queued_prompts", "queued_prompt_tokens", "transferring", "waiting_decode", "decoding",
        "kv_used_fraction", "busy_instances", "mixed_instances")}
    d["mixed_pool"] = {
        "borrowings": sum(c.new == Role.MIXED for c in self.role_changes),
        "returns": sum(c.old == Role.MIXED for c in self.role_changes)}
    d["preemptions"] = sum(r.preemptions for r in self.records)
    d["compiled_during_run"] = {"programs": self.compiles, "seconds": self.compile_s}
    d["faults"] = {e.value: self.faults.get(e.value, 0) for e in FaultEvent}
    if self.utilization is not None:
      d["instances"] = {pool: u.to_dict() for pool, u in self.utilization.items()}
    return d


class Run:
  """State of one driver run (the loop body is split into small steps); replay()
  and the online driver (runtime.online) share it. Subclasses hook :meth:`emit`
  and :meth:`_end` (and, for faults, :meth:`count` and :meth:`replaced`).
  ``transfer_retries``: how often a failed KV transfer is sent again before its
  request is recomputed."""

  def __init__(self, coord: Coordinator, executor: Executor, specs: Sequence[RequestSpec],
               clock, sample_every_s: float, transfer_retries: int = 2):
    if transfer_retries < 0:
      raise ValueError(f"transfer_retries must be >= 0, got {transfer_retries}")
    self.coord, self.ex, self.clock = coord, executor, clock
    self.sample_every_s, self.transfer_retries = sample_every_s, transfer_retries
    self.faults: dict[FaultEvent, int] = {}
    self._retries: dict[Request, int] = {}     # failed transfers so far, per attempt
    self.arrivals = collections.deque(sorted(specs, key=lambda s: (s.arrival_s, s.request_id)))
    self.records = {s.request_id: RequestRecord(s.request_id, s.arrival_s, s.prompt_tokens,
                                                s.output_tokens) for s in specs}
    if len(self.records) != len(specs):
      raise ValueError("request ids must be unique")
    self.timeline: list[PoolSample] = []
    self.next_sample = 0.0
    self.ended = 0              # requests completed, failed or rejected so far

  def admit_arrivals(self, now: float) -> None:
    while self.arrivals and self.arrivals[0].arrival_s <= now:
      s = self.arrivals.popleft()
      if admit(self.coord, s, self.records[s.request_id]) is None:
        self.ended += 1

  def apply(self, events) -> None:
    for ev in events:
      if isinstance(ev, WorkDone):
        self.work_done(ev)
      elif isinstance(ev, TransferDone):
        self.transfer_landed(ev)
      elif isinstance(ev, TransferFailed):
        self.transfer_failed(ev)
      elif isinstance(ev, WorkFailed):
        ev.work.instance.busy = False
        for r in _requests_of(ev.work):
          self._fail(r, ev.reason)

  def work_done(self, ev: WorkDone) -> None:
    done = self.coord.complete(ev.work)
    for r in done.emitted:
      self.emit(r, int(ev.tokens[r.request_id]), ev.at_s)
    for r in done.finished:
      rec = self.records.get(r.request_id)
      if rec is not None and rec.status == RequestStatus.PENDING:   # not ended by emit
        self._end(r, RequestStatus.COMPLETED)

  def emit(self, r: Request, token: int, at_s: float) -> None:
    """``r`` emitted ``token`` at ``at_s`` (drivers may end ``r`` here)."""
    rec = self.records[r.request_id]
    rec.add_token(at_s)
    rec.token_ids.append(token)

  def transfer_landed(self, ev: TransferDone) -> None:
    rec = self.records[ev.request.request_id]
    rec.transfer_bytes += ev.nbytes
    rec.transfer_s += max(0.0, ev.at_s - rec.first_token_s)
    self._retries.pop(ev.request, None)
    if ev.request.phase == Phase.TRANSFERRING:
      self.coord.transfer_done(ev.request)

  def launch(self, now: float) -> bool:
    launched = False
    for inst in self.coord.instances:
      if inst.busy:
        continue
      work = self.coord.next_work(inst, now)
      if work is None:
        continue
      launched = True
      for r in list(work.prefill) + [c.request for c in work.chunks if c.start == 0]:
        rec = self.records[r.request_id]
        if rec.scheduled_s is None:      # a recomputed request keeps its first start
          rec.scheduled_s = now
      self.ex.launch(work, now)
    return launched

  def advance(self, now: float) -> bool:
    """One pass after admission: executor events, pool rebalancing, new work on
    every idle instance, an occupancy sample. Returns whether work launched."""
    self.apply(self.ex.poll(now))
    self.coord.rebalance()
    launched = self.launch(now)
    while self.coord.rebalance():     # new work can move the pool: settle it
      launched = self.launch(now) or launched
    self.sample(now)
    return launched

  def sample(self, now: float) -> None:
    if now < self.next_sample:
      return
    self.timeline.append(pool_sample(self.coord, now))
    self.next_sample = now + self.sample_every_s

  # ---------------------------------------------------------------- faults
  def fail_instance(self, name: str, now: float) -> InstanceFailure:
    """Instance ``name`` failed at ``now``: the coordinator takes it down (raises
    KeyError for an unknown name, ValueError if already down, changing
    nothing), the executor forgets its work and transfers, and every request
    it touched is resubmitted (or fails, if nothing can take it)."""
    lost = self.coord.fail_instance(name)
    self.ex.fail_instance(name)
    self.count(FaultEvent.INSTANCE_FAILED)
    again, failed = [], []
    for r in lost:
      new = self.resubmit(r, f"instance {name} failed")
      (again if new is not None else failed).append(r.request_id)
    return InstanceFailure(name, tuple(again), tuple(failed))

  def resubmit(self, old: Request, why: str) -> Request | None:
    """Recomputes unfinished ``old`` (``Coordinator.resubmit``): the new attempt
    is routed and told the tokens it resumes after; the record is kept. If no
    instance can take it, it fails (reason: ``why`` and the rejection).
    Returns the new attempt, or None."""
    rec = self.records[old.request_id]
    self.ex.release(old)
    self._retries.pop(old, None)
    new = self.coord.resubmit(old)
    if isinstance(new, str):
      self._end(old, RequestStatus.FAILED, f"{why}; could not be recomputed: {new}")
      return None
    self.count(FaultEvent.RESUBMITTED)
    rec.prompt_instance, rec.token_instance = new.prompt_instance, new.token_instance
    if new.resumed:
      self.ex.resume(new, rec.token_ids[:new.resumed])
    self.replaced(old, new)
    return new

  def transfer_failed(self, ev: TransferFailed) -> None:
    """Sends the KV again (``transfer_retries`` times), then recomputes."""
    r = ev.request
    if r.phase is not Phase.TRANSFERRING:        # ended or resubmitted meanwhile
      self.ex.release(r)
      return
    tries = self._retries.get(r, 0)
    if tries < self.transfer_retries:
      self._retries[r] = tries + 1
      self.count(FaultEvent.TRANSFER_RETRIED)
      self.ex.retry_transfer(r, ev.at_s)
      return
    self.count(FaultEvent.TRANSFER_FALLBACK)
    self.resubmit(r, f"KV transfer failed {tries + 1} times ({ev.reason})")

  def count(self, event: FaultEvent) -> None:
    self.faults[event] = self.faults.get(event, 0) + 1

  def replaced(self, old: Request, new: Request) -> None:
    """Hook: ``new`` is the attempt that now carries ``old``'s request."""

  def _end(self, r: Request, status: RequestStatus, reason: str = "") -> None:
    self._retries.pop(r, None)
    rec = self.records[r.request_id]
    rec.preemptions = r.preemptions
    rec.finish(status, reason)
    self.ended += 1
    self.ex.release(r)

  def _fail(self, r: Request, reason: str) -> None:
    if r.phase != Phase.FINISHED:
      self.coord.fail(r, reason)
    self._end(r, RequestStatus.FAILED, reason)

  def fail_stuck(self) -> None:
    """Nothing runs and nothing can start: fail what is left, saying why."""
    for r in list(self.coord.requests_in_flight()):
      self._fail(r, f"could not be scheduled (stuck in phase {r.phase.value} on "
                    f"{r.token_instance if r.phase != Phase.QUEUED else r.prompt_instance})")


def admit(coord: Coordinator, spec: RequestSpec, rec: RequestRecord) -> Request | None:
  """Submits an arrived request; records where it goes, or its rejection.
  Returns the accepted Request, or None if it was rejected."""
  r = Request(spec.request_id, spec.arrival_s, spec.prompt_tokens, spec.output_tokens)
  reason = coord.submit(r)
  if reason is not None:
    rec.finish(RequestStatus.REJECTED, reason)
    return None
  rec.prompt_instance, rec.token_instance = r.prompt_instance, r.token_instance
  return r


def _requests_of(work: Work) -> list[Request]:
  return list(work.prefill) + list(work.decode) + [c.request for c in work.chunks]


def replay(coord: Coordinator, executor: Executor, specs: Sequence[RequestSpec], clock, *,
           sample_every_s: float = 0.5,
           progress: Callable[[int, int], None] | None = None,
           faults: Sequence[InstanceFault] = (), transfer_retries: int = 2) -> RunResult:
  """Runs ``specs`` (arrivals in seconds from the clock's zero) to the end.

  Every request ends COMPLETED, REJECTED (at admission, with the reason) or
  FAILED (with the reason); none is dropped. ``progress(ended, total)`` is
  called whenever requests end. ``faults``: instances failing on the way
  (each applied at the first pass at or after its time, unless the run ended).
  """
  run = Run(coord, executor, specs, clock, sample_every_s, transfer_retries)
  return drive(run, progress=progress, faults=faults)


def drive(run: Run, *, progress: Callable[[int, int], None] | None = None,
          faults: Sequence[InstanceFault] = ()) -> RunResult:
  """The loop of :func:`replay` over a prepared ``run``. A caller that must
  report what finished when the executor raises (a lost peer process) keeps
  ``run`` and reads ``run.records``."""
  coord, executor, clock = run.coord, run.ex, run.clock
  pending = collections.deque(sorted(faults, key=lambda f: f.at_s))
  total, ended = len(run.records), -1
  while True:
    now = clock.now()
    run.admit_arrivals(now)
    while pending and pending[0].at_s <= now:
      run.fail_instance(pending.popleft().instance, now)
    launched = run.advance(now)
    if progress is not None and run.ended != ended:
      ended = run.ended
      progress(ended, total)
    if not executor.busy and not launched:
      if not run.arrivals and coord.idle:
        break
      if not run.arrivals:
        run.fail_stuck()
        continue
    wakes = [run.next_sample]
    if run.arrivals:
      wakes.append(run.arrivals[0].arrival_s)
    if pending:
      wakes.append(pending[0].at_s)
    nxt = executor.next_event_s(now)
    if nxt is not None:
      wakes.append(nxt)
    if not launched:
      clock.sleep_until(min(wakes))
  wall = clock.now()
  run.timeline.append(pool_sample(coord, wall))
  records = [run.records[k] for k in sorted(run.records)]
  return RunResult(records, summarize(records, wall), run.timeline, list(coord.role_changes),
                   faults={e.value: n for e, n in run.faults.items()})
