"""The policy process's executor: Work becomes ops for every process.

:class:`RemoteExecutor` implements ``runtime.executor.Executor`` for the
driver loop on process 0 (``runtime.loop``, unchanged): ``launch`` /
``release`` / ``fail_instance`` publish an :class:`~splitjax.distributed.wire.Op`
under ``<ns>/op/<seq>`` and apply it to process 0's own
:class:`~splitjax.distributed.instance_side.InstanceSide` at once; ``poll``
collects the messages of process 0's instances and of every other process
(``<ns>/ev/<process>/<n>``, deleted once read) and turns them back into
events on the loop's own ``Work`` and ``Request`` objects. Every poll also
watches the peers (``Control.check``): a dead or stopped process raises
``PeerFailure`` out of the loop.

Ordering kept from the in-process executor: a request's TransferDone is
reported only after the WorkDone of the prefill that produced it. Events
of released attempts or of failed instances are dropped. KV transfers are
never failed on purpose here (``transfer_faults`` is empty), so
``retry_transfer`` is never called.
"""

from __future__ import annotations

from typing import Callable, Sequence

from splitjax.config import SamplingConfig
from splitjax.distributed.control import Control
from splitjax.distributed.instance_side import InstanceSide
from splitjax.distributed.wire import ChunkRef, Message, MessageKind, Op, OpKind, ReqRef
from splitjax.runtime.executor import Event, TransferDone, WorkDone, WorkFailed, resumed_ids
from splitjax.runtime.faults import TransferFaults
from splitjax.scheduling.records import Request, Work


class RemoteExecutor:
  """See module doc. ``peers``: the other processes; ``prompt_ids(request)``:
  its original prompt ids; ``sampling(request)``: its SamplingConfig (None:
  every request greedy); ``poll_s``: the loop's polling interval while busy."""

  def __init__(self, control: Control, ns: str, side: InstanceSide, peers: Sequence[int],
               prompt_ids: Callable[[Request], list[int]],
               sampling: Callable[[Request], SamplingConfig] | None = None,
               poll_s: float = 0.002):
    self.control, self.ns, self.side, self.poll_s = control, ns, side, poll_s
    self.prompt_ids, self.sampling = prompt_ids, sampling
    self.transfer_faults = NoTransferFaults()
    self._seq = 0
    self._next_key = 0
    self._keys: dict[Request, int] = {}
    self._attempts: dict[int, Request] = {}
    self._ops: dict[int, Work] = {}             # launched, not yet reported
    self._prefilling: dict[int, int] = {}       # key -> seq of its unreported prefill
    self._moving: dict[int, str] = {}           # key -> source instance of its KV transfer
    self._landed: list[Message] = []            # TRANSFER_DONE waiting for its prefill
    self._resumed: dict[Request, list[int]] = {}
    self._next_event = {p: 0 for p in peers}

  # ------------------------------------------------------------------ ops
  def _publish(self, kind: OpKind, now: float, **fields) -> None:
    op = Op(self._seq, kind, **fields)
    self._seq += 1
    self.control.publish(f"{self.ns}/op/{op.seq}", op.to_json())
    self.side.apply(op, now)

  def _key(self, r: Request) -> int:
    key = self._keys.get(r)
    if key is None:
      key = self._keys[r] = self._next_key
      self._attempts[key] = r
      self._next_key += 1
    return key

  def _ref(self, r: Request, with_prompt: bool = False) -> ReqRef:
    ids, sampling = (), None
    if with_prompt:
      ids = tuple(self.prompt_ids(r)) + tuple(self._resumed.get(r, ()))
      if self.sampling is not None:
        sc = self.sampling(r)
        sampling = (sc.temperature, sc.top_k, sc.top_p, sc.seed)
    return ReqRef(self._key(r), r.request_id, r.prompt_tokens, r.output_tokens,
                  r.token_instance, r.slot, ids, sampling)

  def launch(self, work: Work, now: float) -> None:
    seq = self._seq
    self._ops[seq] = work
    for r in work.prefill:
      self._prefilling[self._key(r)] = seq
    for r in work.transfers:
      self._moving[self._key(r)] = work.instance.name
    self._publish(OpKind.LAUNCH, now, instance=work.instance.name, work_kind=work.kind,
                  prefill=tuple(self._ref(r, True) for r in work.prefill),
                  transfers=tuple(self._key(r) for r in work.transfers),
                  admitted=tuple(self._ref(r) for r in work.admitted),
                  decode=tuple(self._ref(r) for r in work.decode),
                  chunks=tuple(ChunkRef(self._ref(c.request, c.start == 0), c.start, c.end)
                               for c in work.chunks))

  def release(self, request: Request) -> None:
    key = self._keys.pop(request, None)
    self._resumed.pop(request, None)
    if key is None:
      return
    del self._attempts[key]
    self._prefilling.pop(key, None)
    self._moving.pop(key, None)
    self._publish(OpKind.RELEASE, 0.0, keys=(key,))

  def fail_instance(self, name: str) -> None:
    """Forgets ``name``'s work in flight and every KV transfer from or to it."""
    for seq in [s for s, w in self._ops.items() if w.instance.name == name]:
      del self._ops[seq]
    self._prefilling = {k: s for k, s in self._prefilling.items() if s in self._ops}
    self._moving = {k: src for k, src in self._moving.items()
                    if src != name and self._attempts[k].token_instance != name}
    self._publish(OpKind.FAIL, 0.0, instance=name)

  def resume(self, request: Request, emitted: Sequence[int]) -> None:
    self._resumed[request] = resumed_ids(request, emitted)

  def retry_transfer(self, request: Request, now: float) -> None:
    """Never called: no TransferFailed is ever reported here (a transfer that
    cannot arrive is a dead peer, and ``transfer_faults`` refuses faults), so
    a call is a driver bug and raises RuntimeError."""
    raise RuntimeError(f"request {request.request_id}: no KV transfer failed across "
                       "processes, so there is none to retry")

  def stop(self) -> None:
    """Tells every process the run is over."""
    self._publish(OpKind.STOP, 0.0)

  # ------------------------------------------------------------------ events
  @property
  def busy(self) -> bool:
    return bool(self._ops or self._moving)

  def next_event_s(self, now: float) -> float | None:
    return now + self.poll_s if self.busy else None

  def poll(self, now: float) -> list[Event]:
    """Events reported by every process since the last poll (see module doc).
    Raises PeerFailure / JobAborted when a peer is gone or the job aborted."""
    self.control.check()
    events: list[Event] = []
    for m in self.side.poll(now) + self._peer_messages():
      if m.kind == MessageKind.TRANSFER_DONE:
        self._landed.append(m)
        continue
      work = self._ops.pop(m.seq, None)
      if work is None:              # its instance failed meanwhile
        continue
      for r in work.prefill:
        self._prefilling.pop(self._keys.get(r, -1), None)
      if m.kind == MessageKind.WORK_DONE:
        events.append(WorkDone(work, now, m.tokens))
      else:
        events.append(WorkFailed(work, now, m.reason))
    waiting = []
    for m in self._landed:
      if m.key not in self._moving:           # released, or its instance failed
        continue
      if m.key in self._prefilling:
        waiting.append(m)
        continue
      del self._moving[m.key]
      events.append(TransferDone(self._attempts[m.key], now, m.nbytes))
    self._landed = waiting
    return events

  def _peer_messages(self) -> list[Message]:
    out = []
    for p, n in self._next_event.items():
      while (batch := self.control.try_get(f"{self.ns}/ev/{p}/{n}")) is not None:
        self.control.delete(f"{self.ns}/ev/{p}/{n}")
        out.extend(Message.from_json(m) for m in batch)
        n += 1
      self._next_event[p] = n
    return out


class NoTransferFaults(TransferFaults):
  """Transfer faults cannot be injected across processes: asking is an error."""

  def add(self, count: int = 0, request_ids=()) -> None:
    raise ValueError("KV-transfer faults are injected in single-process clusters only")
