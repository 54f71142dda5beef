"""An executor with hand-checkable times and tokens, for policy tests (no jax).

Times (seconds) are linear: a prefill takes ``prefill_base_s + prefill_per_token_s
x prompt tokens``, a decode step ``decode_base_s + decode_per_seq_s x batch``, a
mixed step the sum of its decode and chunk parts, a KV transfer ``transfer_s``
after the prefill ends. Token ``i`` (0-based) of request ``r`` is
``(r.request_id * 1000 + i) % vocab_size``, whatever the policy.

It also checks what a device would enforce: a decode slot holds one request at
a time, a request decodes only after its KV was inserted, chunks arrive in
order, and a request never runs in two works at once. A violation raises
``AssertionError`` (a policy bug).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools

from splitjax.runtime.executor import Event, TransferDone, WorkDone
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

  def __init__(self, times: FakeTimes = FakeTimes(), kv_bytes_per_token: int = 1024):
    self.times, self.kv_bytes_per_token = times, kv_bytes_per_token
    self._events: list = []            # heap of (time, seq, event)
    self._seq = itertools.count()
    self._slots: dict[tuple[str, int], int] = {}    # (instance, slot) -> request id
    self._inserted: set[int] = set()   # request ids whose KV sits in their decode slot
    self._computed: dict[int, int] = {}  # request id -> prompt tokens with KV
    self._emitted: dict[int, int] = {}   # request id -> tokens emitted
    self._running: set[int] = set()
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
        w = ev.work
        self._running -= {r.request_id for r in w.prefill + w.decode}
        self._running -= {c.request.request_id for c in w.chunks}
      out.append(ev)
    return out

  def release(self, request: Request) -> None:
    for key, rid in list(self._slots.items()):
      if rid == request.request_id:
        del self._slots[key]
    self._inserted.discard(request.request_id)
    self._running.discard(request.request_id)

  def launch(self, work: Work, now: float) -> None:
    self.launched.append(work)
    inst, t = work.instance.name, self.times
    ids = [r.request_id for r in work.prefill + work.decode] + [c.request.request_id
                                                              for c in work.chunks]
    assert len(ids) == len(set(ids)), f"a request appears twice in one work: {ids}"
    assert not self._running & set(ids), f"requests already running: {self._running & set(ids)}"
    self._running |= set(ids)
    for r in work.admitted:
      self._occupy(inst, r)
    tokens: dict[int, int] = {}
    dur = 0.0
    if work.kind == WorkKind.PREFILL:
      dur = t.prefill_base_s + t.prefill_per_token_s * work.prompt_tokens
      for r in work.prefill:
        assert self._computed.get(r.request_id, 0) == 0, f"request {r.request_id} prefilled twice"
        self._computed[r.request_id] = r.prompt_tokens
        if r.token_instance == inst:
          self._occupy(inst, r)
        tokens[r.request_id] = self._next_token(r)
    else:
      dur = t.decode_base_s + t.decode_per_seq_s * len(work.decode)
      for r in work.decode:
        assert r.request_id in self._inserted, f"request {r.request_id} decodes without its KV"
        assert self._slots.get((inst, r.slot)) == r.request_id, f"slot mismatch for {r.request_id}"
        tokens[r.request_id] = self._next_token(r)
      for c in work.chunks:
        r = c.request
        assert self._computed.get(r.request_id, 0) == c.start, (
            f"chunk [{c.start}, {c.end}) of {r.request_id} out of order")
        if c.start == 0:
          self._occupy(inst, r)
        self._computed[r.request_id] = c.end
        dur += t.prefill_per_token_s * (c.end - c.start)
        if c.last:
          tokens[r.request_id] = self._next_token(r)
    end = now + dur
    self._push(end, WorkDone(work, end, tokens))
    for r in work.transfers:
      self._push(end + t.transfer_s, TransferDone(r, end + t.transfer_s,
                                                  r.prompt_tokens * self.kv_bytes_per_token))

  def _next_token(self, r: Request) -> int:
    i = self._emitted.get(r.request_id, 0)
    self._emitted[r.request_id] = i + 1
    return fake_token(r.request_id, i)

  def _occupy(self, inst: str, r: Request) -> None:
    assert r.slot is not None, f"request {r.request_id} has no slot on {inst}"
    holder = self._slots.get((inst, r.slot))
    assert holder in (None, r.request_id), (
        f"slot {r.slot} of {inst} holds {holder}, cannot take {r.request_id}")
    self._slots[(inst, r.slot)] = r.request_id
    self._inserted.add(r.request_id)

  def _push(self, at: float, event) -> None:
    heapq.heappush(self._events, (at, next(self._seq), event))
