"""An executor with hand-checkable times and tokens, for policy tests (no jax).

Times (seconds) are linear: a prefill takes ``prefill_base_s + prefill_per_token_s
x prompt tokens``, a decode step ``decode_base_s + decode_per_seq_s x batch``, a
mixed step the sum of its decode and chunk parts, a KV transfer ``transfer_s``
after the prefill ends (or its retry). Token ``i`` (0-based) of request ``r`` is
``(r.request_id * 1000 + i) % vocab_size``, whatever the policy: a resubmitted
request (``r.resumed`` tokens emitted before) goes on at ``i = r.resumed``.

It also checks what a device would enforce: a decode slot holds one request at
a time, a request decodes only after its KV was inserted, chunks arrive in
order, and a request never runs in two works at once. A violation raises
``AssertionError`` (a policy bug). State is kept per Request object (an
attempt): a resubmitted request is a new object. Faults: ``fail_instance``
drops an instance's works and transfers; ``transfer_faults`` makes transfers
fail (TransferFailed), ``retry_transfer`` sends one again.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

from typing import Sequence

from splitjax.runtime.executor import Event, TransferDone, TransferFailed, WorkDone
from splitjax.runtime.faults import TransferFaults
from splitjax.scheduling.records import Request, Work, WorkKind


@dataclasses.dataclass(frozen=True)
class FakeTimes:
  prefill_base_s: float = 0.010
  prefill_per_token_s: float = 0.0001
  decode_base_s: float = 0.005
  decode_per_seq_s: float = 0.0005
  transfer_s: float = 0.002


def fake_token(request_id: int, index: int, vocab_size: int = 32000) -> int:
  return (request_id * 1000 + index) % vocab_size


class FakeExecutor:
  """Runs Work in virtual time (use with ``clock.VirtualClock``)."""

  def __init__(self, times: FakeTimes = FakeTimes(), kv_bytes_per_token: int = 1024,
               transfer_faults: TransferFaults | None = None):
    self.times, self.kv_bytes_per_token = times, kv_bytes_per_token
    self.transfer_faults = transfer_faults or TransferFaults()
    self._events: list = []            # heap of (time, seq, event)
    self._seq = itertools.count()
    self._slots: dict[tuple[str, int], Request] = {}    # (instance, slot) -> holder
    self._inserted: set[Request] = set()   # requests whose KV sits in their decode slot
    self._computed: dict[Request, int] = {}  # request -> prompt tokens with KV
    self._running: set[Request] = set()
    self._failed_transfers: set[Request] = set()   # may be retried
    self.launched: list[Work] = []

  @property
  def busy(self) -> bool:
    return bool(self._events)

  def next_event_s(self, now: float) -> float | None:
    return self._events[0][0] if self._events else None

  def poll(self, now: float) -> list[Event]:
    out = []
    while self._events and self._events[0][0] <= now:
      ev = heapq.heappop(self._events)[2]
      if isinstance(ev, WorkDone):
        self._running -= _requests(ev.work)
      elif isinstance(ev, TransferFailed):
        self._failed_transfers.add(ev.request)
      out.append(ev)
    return out

  def release(self, request: Request) -> None:
    for key, holder in list(self._slots.items()):
      if holder is request:
        del self._slots[key]
    self._inserted.discard(request)
    self._running.discard(request)
    self._computed.pop(request, None)
    self._failed_transfers.discard(request)
    moving = {seq for _, seq, ev in self._events
              if isinstance(ev, (TransferDone, TransferFailed)) and ev.request is request}
    if moving:                            # no event follows for a released request
      self._events = [e for e in self._events if e[1] not in moving]
      heapq.heapify(self._events)

  # ------------------------------------------------------------------ faults
  def fail_instance(self, name: str) -> None:
    """Drops ``name``'s works and every transfer from or to it (no events follow)."""
    keep = []
    for item in self._events:
      ev = item[2]
      if isinstance(ev, WorkDone) and ev.work.instance.name == name:
        self._running -= _requests(ev.work)
      elif isinstance(ev, (TransferDone, TransferFailed)) and name in (
          ev.request.prompt_instance, ev.request.token_instance):
        pass
      else:
        keep.append(item)
    self._events = keep
    heapq.heapify(keep)
    for key in [k for k in self._slots if k[0] == name]:
      self._inserted.discard(self._slots.pop(key))
    self._failed_transfers = {r for r in self._failed_transfers
                              if name not in (r.prompt_instance, r.token_instance)}

  def resume(self, request: Request, emitted: Sequence[int]) -> None:
    want = [fake_token(request.request_id, i) for i in range(request.resumed)]
    assert list(emitted) == want, f"request {request.request_id} resumed from {emitted}"

  def retry_transfer(self, request: Request, now: float) -> None:
    assert request in self._failed_transfers, f"no failed transfer of {request.request_id}"
    self._failed_transfers.discard(request)
    self._push_transfer(request, now)

  def launch(self, work: Work, now: float) -> None:
    self.launched.append(work)
    inst, t = work.instance.name, self.times
    ids = [r.request_id for r in work.prefill + work.decode] + [c.request.request_id
                                                              for c in work.chunks]
    assert len(ids) == len(set(ids)), f"a request appears twice in one work: {ids}"
    reqs = _requests(work)
    assert not self._running & reqs, f"requests already running: {self._running & reqs}"
    self._running |= reqs
    for r in work.admitted:
      self._occupy(inst, r)
    tokens: dict[int, int] = {}
    dur = 0.0
    if work.kind == WorkKind.PREFILL:
      dur = t.prefill_base_s + t.prefill_per_token_s * work.prompt_tokens
      for r in work.prefill:
        assert self._computed.get(r, 0) == 0, f"request {r.request_id} prefilled twice"
        self._computed[r] = r.prompt_tokens
        if r.token_instance == inst:
          self._occupy(inst, r)
        tokens[r.request_id] = self._next_token(r)
    else:
      dur = t.decode_base_s + t.decode_per_seq_s * len(work.decode)
      for r in work.decode:
        assert r in self._inserted, f"request {r.request_id} decodes without its KV"
        assert self._slots.get((inst, r.slot)) is r, f"slot mismatch for {r.request_id}"
        tokens[r.request_id] = self._next_token(r)
      for c in work.chunks:
        r = c.request
        assert self._computed.get(r, 0) == c.start, (
            f"chunk [{c.start}, {c.end}) of {r.request_id} out of order")
        if c.start == 0:
          self._occupy(inst, r)
        self._computed[r] = c.end
        dur += t.prefill_per_token_s * (c.end - c.start)
        if c.last:
          tokens[r.request_id] = self._next_token(r)
    end = now + dur
    self._push(end, WorkDone(work, end, tokens))
    for r in work.transfers:
      self._push_transfer(r, end)

  def _push_transfer(self, r: Request, start: float) -> None:
    at = start + self.times.transfer_s
    if self.transfer_faults.take(r.request_id):
      self._push(at, TransferFailed(r, at, "injected transfer failure"))
    else:
      self._push(at, TransferDone(r, at, r.prompt_tokens * self.kv_bytes_per_token))

  @staticmethod
  def _next_token(r: Request) -> int:
    """Token number ``resumed + generated`` of the request (generated: before this work)."""
    return fake_token(r.request_id, r.resumed + r.generated)

  def _occupy(self, inst: str, r: Request) -> None:
    assert r.slot is not None, f"request {r.request_id} has no slot on {inst}"
    holder = self._slots.get((inst, r.slot))
    assert holder in (None, r), (
        f"slot {r.slot} of {inst} holds {holder.request_id}, cannot take {r.request_id}")
    self._slots[(inst, r.slot)] = r
    self._inserted.add(r)

  def _push(self, at: float, event) -> None:
    heapq.heappush(self._events, (at, next(self._seq), event))


def _requests(work: Work) -> set[Request]:
  return set(work.prefill) | set(work.decode) | {c.request for c in work.chunks}
