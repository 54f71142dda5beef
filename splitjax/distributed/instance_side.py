"""One process's instances: applies the job's ops, runs their Work, reports back.

Every process (the policy process included) owns an :class:`InstanceSide`
over the replicas placed on it (``placement``). It applies every
:class:`~splitjax.distributed.wire.Op` in sequence order:

- LAUNCH on a local instance: the op's requests become local ``Request``
  stand-ins (one per attempt key, reused by later ops) and the Work runs on
  a :class:`_LocalExecutor` (the in-process ``JaxExecutor``; a KV transfer to
  an instance of another process is sent through the ``KVChannel``);
- every LAUNCH's transfers to other processes: the destination process
  receives the KV (landing reported as TRANSFER_DONE), every process not
  involved skips it (see ``kv_transfer``: all processes issue every
  cross-process transfer in one order);
- RELEASE / FAIL drop device state as ``JaxExecutor`` does.

:meth:`poll` turns the executor's events into :class:`Message` s.
"""

from __future__ import annotations

from typing import Mapping

from jax.sharding import Mesh

from splitjax import transfer
from splitjax.config import SamplingConfig
from splitjax.distributed.kv_transfer import KVChannel
from splitjax.distributed.placement import InstancePlacement
from splitjax.distributed.wire import Message, MessageKind, Op, OpKind, ReqRef
from splitjax.runtime.executor import TransferDone, WorkDone, WorkFailed
from splitjax.runtime.jax_executor import JaxExecutor, Replica, _Transfer
from splitjax.scheduling.records import Chunk, Request, Work


_GREEDY = SamplingConfig()


class InstanceRef:
  """Stands in for a scheduling ``Instance`` in a local Work (only its name is read)."""

  def __init__(self, name: str):
    self.name = name


class _LocalExecutor(JaxExecutor):
  """JaxExecutor whose transfers to instances of other processes go through
  the channel (the receiver reports their landing, not this process)."""

  def __init__(self, side: "InstanceSide", replicas, transfer_mode):
    super().__init__(replicas, side.prompt_ids, transfer_mode, sampling=side.sampling)
    self.side = side

  def _start_transfer(self, flight, r: Request) -> None:
    if r.token_instance in self.replicas:
      return super()._start_transfer(flight, r)
    side = self.side
    dst = side.placement[r.token_instance]
    one = transfer.row_prefix(flight.prefix, flight.rows[r.request_id])
    side.channel.send(one, self.replicas[flight.work.instance.name].engine.mesh, dst.process,
                      side.meshes[dst.name], side.tag(r))

  def run(self, work: Work, now: float) -> bool:
    """Launches ``work``; False if it could not run (a WorkFailed follows)."""
    failed = len(self._failed)
    self.launch(work, now)
    return len(self._failed) == failed

  def expect(self, r: Request, dst: Replica, prefix) -> None:
    """``prefix`` (received from another process, maybe still in flight) is
    ``r``'s KV on ``dst``: reported as TransferDone once it is ready."""
    self._transfers.append(_Transfer(None, r, dst, prefix))


class InstanceSide:
  """See module doc. ``placement``: every instance of the job; ``meshes``:
  every instance's mesh (any process's devices); ``replicas``: this
  process's instances. ``timeout_s`` bounds a wait for a transfer header."""

  def __init__(self, me: int, placement: Mapping[str, InstancePlacement],
               meshes: Mapping[str, Mesh], replicas: list[Replica], channel: KVChannel,
               transfer_mode, timeout_s: float = 300.0):
    self.me, self.placement, self.meshes = me, dict(placement), dict(meshes)
    self.channel, self.timeout_s = channel, timeout_s
    self.ex = _LocalExecutor(self, replicas, transfer_mode)
    self._requests: dict[int, Request] = {}     # attempt key -> local stand-in
    self._keys: dict[Request, int] = {}
    self._prompts: dict[Request, list[int]] = {}
    self._sampling: dict[Request, SamplingConfig] = {}
    self._seq_of: dict[Work, int] = {}
    self._seq = -1

  # ------------------------------------------------------------------ ops
  def apply(self, op: Op, now: float) -> None:
    """Applies ``op`` (which must be the next in sequence). Raises the
    channel's errors (KVLayoutError, control-plane failures)."""
    if op.seq != self._seq + 1:
      raise RuntimeError(f"process {self.me}: op {op.seq} after op {self._seq}")
    self._seq = op.seq
    if op.kind == OpKind.LAUNCH:
      self._launch(op, now)
    elif op.kind == OpKind.RELEASE:
      for key in op.keys:
        r = self._requests.pop(key, None)
        if r is not None:
          self.ex.release(r)
          self._keys.pop(r, None)
          self._prompts.pop(r, None)
          self._sampling.pop(r, None)
    elif op.kind == OpKind.FAIL:
      if op.instance in self.ex.replicas:
        self.ex.fail_instance(op.instance)
        self._seq_of = {w: s for w, s in self._seq_of.items() if w.instance.name != op.instance}

  def _launch(self, op: Op, now: float) -> None:
    src = self.placement[op.instance]
    if src.process == self.me:
      work = self._work(op)
      if not self.ex.run(work, now):      # could not run: its transfers never happen
        for r in work.transfers:
          if self.placement[r.token_instance].process != self.me:
            self.channel.cancel(self.meshes[src.name],
                                self.placement[r.token_instance].process, self.tag(r))
    for ref in op.transfer_refs():
      dst = self.placement[ref.token_instance]
      if src.process == dst.process or src.process == self.me:
        continue      # in-process copy, or sent (or cancelled) by the launch above
      src_mesh, dst_mesh = self.meshes[src.name], self.meshes[dst.name]
      tag = transfer_tag(ref.key, ref.request_id)
      if dst.process == self.me:
        rep = self.ex.replicas[dst.name]
        prefix = self.channel.receive(rep.engine.kv_layout, src.process, src_mesh, dst_mesh,
                                      tag, None, self.timeout_s)
        if prefix is not None:
          self.ex.expect(self._request(ref), rep, prefix)
      else:       # a bystander: keeps the transfer order, holds nothing for the request
        self.channel.skip(src.process, src_mesh, dst.process, dst_mesh, tag, self.timeout_s)

  def _work(self, op: Op) -> Work:
    req = self._request
    work = Work(op.work_kind, InstanceRef(op.instance),
                prefill=tuple(req(r) for r in op.prefill),
                transfers=tuple(self._requests[k] for k in op.transfers),
                admitted=tuple(req(r) for r in op.admitted),
                decode=tuple(req(r) for r in op.decode),
                chunks=tuple(Chunk(req(c.request), c.start, c.end) for c in op.chunks))
    self._seq_of[work] = op.seq
    return work

  def _request(self, ref: ReqRef) -> Request:
    """The local stand-in of attempt ``ref.key`` (made on first sight; its slot
    and token instance follow the latest op)."""
    r = self._requests.get(ref.key)
    if r is None:
      r = self._requests[ref.key] = Request(ref.request_id, 0.0, ref.prompt_tokens,
                                            ref.output_tokens)
      self._keys[r] = ref.key
    r.slot, r.token_instance = ref.slot, ref.token_instance
    if ref.prompt_ids:
      self._prompts[r] = list(ref.prompt_ids)
    if ref.sampling is not None:
      self._sampling[r] = SamplingConfig(*ref.sampling)
    return r

  def prompt_ids(self, r: Request) -> list[int]:
    return self._prompts[r]

  def sampling(self, r: Request) -> SamplingConfig:
    return self._sampling.get(r, _GREEDY)

  def tag(self, r: Request) -> str:
    """Names the KV transfer of local stand-in ``r`` (see :func:`transfer_tag`)."""
    return transfer_tag(self._keys[r], r.request_id)

  # ------------------------------------------------------------------ events
  @property
  def busy(self) -> bool:
    return self.ex.busy

  def poll(self, now: float) -> list[Message]:
    """Finished work and landed KV since the last poll, as messages."""
    out = []
    for ev in self.ex.poll(now):
      if isinstance(ev, WorkDone):
        out.append(Message(MessageKind.WORK_DONE, seq=self._seq_of.pop(ev.work),
                           tokens=dict(ev.tokens)))
      elif isinstance(ev, WorkFailed):
        out.append(Message(MessageKind.WORK_FAILED, seq=self._seq_of.pop(ev.work),
                           reason=ev.reason))
      elif isinstance(ev, TransferDone):
        out.append(Message(MessageKind.TRANSFER_DONE, key=self._keys[ev.request],
                           nbytes=ev.nbytes))
    return out


def transfer_tag(key: int, request_id: int) -> str:
  """Names the KV transfer of attempt ``key`` (checked by the receiver and the
  bystanders against the sender's header)."""
  return f"kv/{key}/{request_id}"
