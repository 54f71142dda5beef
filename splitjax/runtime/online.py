"""The online driver: replay()'s loop on a background thread, fed by callers.

``OnlineEngine`` runs the same pass as :func:`splitjax.runtime.loop.replay`
(admit -> executor events -> mixed pool -> launch -> sample) on one engine
thread, which alone touches the coordinator and the executor (see
WORKSPACE.md, "Why one thread"). Other threads talk to it only through

  rid = engine.submit(generation, sink)   # or raises Overloaded / InvalidRequest
  engine.finish(rid)                      # the caller saw its stop string: end as STOP
  engine.abort(rid)                       # the caller went away: free everything
  engine.fail_instance(name)              # a fault: -> Future[InstanceFailure]
  engine.fail_transfers(count, ids)       # a fault hook: these KV transfers fail

which append to a thread-safe inbox and wake the thread. Requests touched by a
failed instance, and those whose KV transfer failed past its retries, are
recomputed elsewhere (``loop.Run.resubmit``): their streams go on where they
stopped, with the same token indices. The sink gets every
token, then one EndEvent. Requests end early (a stop token id, ``finish``,
``abort``) through ``Coordinator.fail`` and ``Executor.release``, which free
the prompt work, the decode slot and KV, and any transfer on both sides; work
already in flight that holds the request finishes and is ignored for it.

Admission is bounded (``OnlineLimits``): at most ``max_waiting`` accepted
requests without a first token and ``max_open`` unfinished ones; beyond that
``submit`` refuses at once. No jax here (executors are built by a factory).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
from typing import Callable, Iterable

from splitjax.config import SamplingConfig
from splitjax.metrics import RequestRecord, RequestStatus
from splitjax.runtime.clock import WallClock
from splitjax.runtime.executor import Executor, TransferDone, WorkDone
from splitjax.runtime.faults import FaultEvent
from splitjax.runtime.loop import Run, admit
from splitjax.runtime.online_types import (AdmissionGate, EndEvent, EndReason, EngineObserver,
                                           EngineSnapshot, Generation, InstanceSnapshot,
                                           ModelLimits, OnlineLimits, Overloaded, Sink,
                                           StreamEvent, TokenEvent)
from splitjax.scheduling.coordinator import Coordinator
from splitjax.scheduling.records import Phase, Request, Role
from splitjax.workload import RequestSpec

log = logging.getLogger(__name__)

# (prompt_ids(request), sampling(request)) -> the executor the engine drives.
ExecutorFactory = Callable[[Callable[[Request], list[int]], Callable[[Request], SamplingConfig]],
                           Executor]


@dataclasses.dataclass(frozen=True)
class _Submit:
  request_id: int
  gen: Generation
  sink: Sink
  arrival_s: float


@dataclasses.dataclass(frozen=True)
class _End:
  request_id: int
  reason: EndReason      # STOP (finish) or ABORTED (abort)


@dataclasses.dataclass(frozen=True)
class _FailInstance:
  name: str
  done: concurrent.futures.Future


@dataclasses.dataclass(frozen=True)
class _FailTransfers:
  count: int
  request_ids: tuple[int, ...]


@dataclasses.dataclass(eq=False)
class _Live:
  gen: Generation
  sink: Sink
  request: Request | None = None


class _OnlineRun(Run):
  """replay()'s Run with records created on submit and dropped on end, token
  and end events sent to each request's sink, and early ends."""

  def __init__(self, coord: Coordinator, executor: Executor, clock, engine: "OnlineEngine"):
    super().__init__(coord, executor, [], clock, engine.limits.sample_every_s,
                     engine.limits.transfer_retries)
    self.engine, self.gate, self.observer = engine, engine._gate, engine.observer
    self.live: dict[int, _Live] = {}
    self.why: dict[int, EndReason] = {}
    self.borrowings = self.returns = 0

  # ---------------------------------------------------------------- arrivals
  def submit(self, s: _Submit) -> None:
    g = s.gen
    spec = RequestSpec(s.request_id, s.arrival_s, len(g.prompt_ids), g.max_tokens)
    rec = RequestRecord(s.request_id, s.arrival_s, spec.prompt_tokens, spec.output_tokens)
    self.records[s.request_id] = rec
    live = self.live[s.request_id] = _Live(g, s.sink)
    live.request = admit(self.coord, spec, rec)
    if live.request is None:
      self.ended += 1
      self._close(s.request_id, EndReason.REJECTED)

  def end_early(self, rid: int, reason: EndReason, detail: str) -> None:
    """Ends a live request now: STOP completes it, anything else fails it."""
    live = self.live.get(rid)
    if live is None or live.request is None:
      return                                   # already ended
    r = live.request
    self.why[rid] = reason
    if reason == EndReason.STOP:
      if r.phase != Phase.FINISHED:
        self.coord.fail(r, detail)
      self._end(r, RequestStatus.COMPLETED)
    else:
      self._fail(r, detail)

  # ---------------------------------------------------------------- events
  def work_done(self, ev: WorkDone) -> None:
    self.observer.on_work(ev.work.instance.name, ev.work.kind, ev.at_s - ev.work.started_s)
    super().work_done(ev)

  def emit(self, r: Request, token: int, at_s: float) -> None:
    super().emit(r, token, at_s)
    rid, live = r.request_id, self.live[r.request_id]
    rec = self.records[rid]
    if rec.tokens == 1:
      self.gate.first_token()
    if not self._send(live, TokenEvent(rid, rec.tokens - 1, token, at_s)):
      self.end_early(rid, EndReason.ABORTED, "aborted: the token sink failed")
    elif token in live.gen.stop_ids:
      self.end_early(rid, EndReason.STOP, "stop token")

  def transfer_landed(self, ev: TransferDone) -> None:
    rec = self.records.get(ev.request.request_id)
    if rec is None:                  # ended meanwhile: drop what landed
      self.ex.release(ev.request)
      return
    before = rec.transfer_s
    super().transfer_landed(ev)
    self.observer.on_transfer(ev.nbytes, rec.transfer_s - before)

  # ---------------------------------------------------------------- faults
  def count(self, event: FaultEvent) -> None:
    super().count(event)
    self.observer.on_fault(event)

  def replaced(self, old: Request, new: Request) -> None:
    self.live[new.request_id].request = new

  # ---------------------------------------------------------------- ends
  def _end(self, r: Request, status: RequestStatus, reason: str = "") -> None:
    if r.request_id not in self.records:       # ended before (e.g. aborted mid-work)
      return
    super()._end(r, status, reason)
    default = EndReason.LENGTH if status == RequestStatus.COMPLETED else EndReason.FAILED
    self._close(r.request_id, self.why.pop(r.request_id, default))

  def _close(self, rid: int, reason: EndReason) -> None:
    live, rec = self.live.pop(rid), self.records.pop(rid)
    self.why.pop(rid, None)
    self.gate.leave(rec.tokens > 0)
    self._send(live, EndEvent(rid, reason, rec.reason, rec))
    self.observer.on_end(rec, reason)

  @staticmethod
  def _send(live: _Live, ev: StreamEvent) -> bool:
    try:
      live.sink(ev)
      return True
    except Exception:        # a sink must not take the engine down
      log.exception("sink of request %d failed", ev.request_id)
      return False

  def fail_all(self, reason: str) -> None:
    for rid, live in list(self.live.items()):
      if live.request is not None:
        self._fail(live.request, reason)

  # ---------------------------------------------------------------- occupancy
  def sample(self, now: float) -> None:
    if now < self.next_sample:
      return
    self.next_sample = now + self.sample_every_s
    self.engine._snapshot = self.snapshot(now)

  def snapshot(self, now: float, alive: bool = True) -> EngineSnapshot:
    changes = self.coord.role_changes
    self.borrowings += sum(c.new == Role.MIXED for c in changes)
    self.returns += sum(c.old == Role.MIXED for c in changes)
    changes.clear()          # counted; a long-running server must not keep them
    insts = tuple(_instance_snapshot(i) for i in self.coord.instances)
    with self.gate.lock:
      waiting, open_ = self.gate.waiting, self.gate.open
    return EngineSnapshot(now, insts, self.borrowings, self.returns, waiting, open_, alive)


def _instance_snapshot(i) -> InstanceSnapshot:
  transferring = sum(r.phase == Phase.TRANSFERRING for r in i.held.values())
  return InstanceSnapshot(
      i.name, i.home, i.role, i.busy, len(i.prompt_queue), i.pending_prompt_tokens,
      transferring, len(i.decode_queue), len(i.decoding), i.kv.used_tokens,
      i.kv.total_blocks * i.kv.block_tokens)


class OnlineEngine:
  """Serves submitted generations on a background thread; see the module docstring.

  coord: fresh scheduling state; make_executor: builds the executor from the
  engine's prompt / sampling lookups; model: what a request may ask for.
  """

  def __init__(self, coord: Coordinator, make_executor: ExecutorFactory, model: ModelLimits,
               limits: OnlineLimits = OnlineLimits(), observer: EngineObserver | None = None,
               clock: WallClock | None = None):
    self.model, self.limits = model, limits
    self.observer = observer or EngineObserver()
    self.clock = clock or WallClock()
    self._gate = AdmissionGate(limits)
    self._inbox: collections.deque = collections.deque()
    self._wake = threading.Event()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.error = ""                    # why the engine thread died, if it did
    self._run = _OnlineRun(coord, make_executor(self._prompt_ids, self._sampling), self.clock,
                           self)
    self._snapshot = self._run.snapshot(0.0, alive=False)

  # ---------------------------------------------------------------- callers
  def start(self) -> "OnlineEngine":
    if self._thread is not None:
      raise RuntimeError("engine already started")
    self._thread = threading.Thread(target=self._serve, name="splitjax-engine", daemon=True)
    self._thread.start()
    return self

  def stop(self, timeout_s: float = 30.0) -> None:
    """Fails what is still running ("engine stopped") and joins the thread."""
    self._stop.set()
    self._wake.set()
    if self._thread is not None:
      self._thread.join(timeout_s)

  def submit(self, gen: Generation, sink: Sink) -> int:
    """Queues ``gen``; returns its request id. Raises InvalidRequest (never
    servable as given) or Overloaded (refused now). ``sink`` then gets every
    token and one EndEvent, on the engine thread."""
    self.model.check(gen)
    now = self.clock.now()
    rid = self._gate.enter(lambda i: self._inbox.append(_Submit(i, gen, sink, now)))
    self._wake.set()
    return rid

  def finish(self, request_id: int) -> None:
    """Ends the request as STOP (its caller found a stop string); no-op if ended."""
    self._inbox.append(_End(request_id, EndReason.STOP))
    self._wake.set()

  def abort(self, request_id: int) -> None:
    """Ends the request as ABORTED, freeing all it holds; no-op if ended."""
    self._inbox.append(_End(request_id, EndReason.ABORTED))
    self._wake.set()

  def fail_instance(self, name: str) -> concurrent.futures.Future:
    """Fails instance ``name`` on the engine thread (a fault: its work is lost,
    the requests it touched are recomputed elsewhere). The future gets the
    InstanceFailure, or KeyError (unknown name) / ValueError (already down).
    Raises Overloaded (not retryable) if the engine is not running."""
    done: concurrent.futures.Future = concurrent.futures.Future()
    with self._gate.lock:              # appended before close, or refused
      if self._gate.closed or not self.alive:
        raise Overloaded(f"engine stopped: {self._gate.closed or 'not running'}",
                         retryable=False)
      self._inbox.append(_FailInstance(name, done))
    self._wake.set()
    return done

  def fail_transfers(self, count: int = 0, request_ids: Iterable[int] = ()) -> None:
    """Fault hook: the next ``count`` KV transfers, and the next one of each
    of ``request_ids``, fail (then are retried or recomputed)."""
    self._inbox.append(_FailTransfers(count, tuple(request_ids)))
    self._wake.set()

  @property
  def snapshot(self) -> EngineSnapshot:
    """Occupancy as of the last sample (at most ``sample_every_s`` old while the
    engine runs); the admission counts ``waiting`` / ``open`` are current."""
    with self._gate.lock:
      waiting, open_ = self._gate.waiting, self._gate.open
    return dataclasses.replace(self._snapshot, waiting=waiting, open=open_)

  @property
  def alive(self) -> bool:
    return self._thread is not None and self._thread.is_alive()

  # ---------------------------------------------------------------- engine thread
  def _prompt_ids(self, r: Request) -> list[int]:
    return list(self._run.live[r.request_id].gen.prompt_ids)

  def _sampling(self, r: Request) -> SamplingConfig:
    return self._run.live[r.request_id].gen.sampling

  def _serve(self) -> None:
    reason = "engine stopped"
    try:
      stalled_since = None
      while not self._stop.is_set():
        self._wake.clear()
        now = self.clock.now()
        self._drain()
        if self._run.advance(now):
          continue
        stalled_since = self._check_stall(now, stalled_since)
        self._sleep(now)
    except Exception as e:        # report, fail every request, never hang callers
      log.exception("engine thread failed")
      self.error = reason = f"engine error: {type(e).__name__}: {e}"
    finally:
      self._shutdown(reason)

  def _drain(self) -> None:
    while self._inbox:
      cmd = self._inbox.popleft()
      if isinstance(cmd, _Submit):
        self._run.submit(cmd)
      elif isinstance(cmd, _FailInstance):
        self._fail_instance(cmd)
      elif isinstance(cmd, _FailTransfers):
        self._run.ex.transfer_faults.add(cmd.count, cmd.request_ids)
      else:
        detail = "stop sequence" if cmd.reason == EndReason.STOP else "aborted by the client"
        self._run.end_early(cmd.request_id, cmd.reason, detail)

  def _fail_instance(self, cmd: _FailInstance) -> None:
    try:
      out = self._run.fail_instance(cmd.name, self.clock.now())
    except (KeyError, ValueError) as e:        # unknown, or already down
      cmd.done.set_exception(e)
      return
    except BaseException as e:                 # a bug: tell the caller, then die
      cmd.done.set_exception(e)
      raise
    cmd.done.set_result(out)

  def _check_stall(self, now: float, since: float | None) -> float | None:
    run = self._run
    if run.ex.busy or run.coord.idle:
      return None
    if since is None:
      return now
    if now - since >= self.limits.stall_s:
      run.fail_stuck()
      return None
    return since

  def _sleep(self, now: float) -> None:
    wake = min(now + self.limits.idle_wait_s, self._run.next_sample)
    nxt = self._run.ex.next_event_s(now)
    if nxt is not None:
      wake = min(wake, nxt)
    if wake > now:
      self._wake.wait(wake - now)

  def _shutdown(self, reason: str) -> None:
    self._gate.close(reason)
    try:
      self._drain()                 # nothing can be added after close
      self._run.fail_all(reason)
    finally:
      self._snapshot = self._run.snapshot(self.clock.now(), alive=False)
