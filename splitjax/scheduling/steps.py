"""Per-instance step policies: what an idle instance runs next.

One class per behaviour; each returns a :class:`Work` (and allocates what it
admits) or None when there is nothing to do:

  PromptStep             split prompt instance: FCFS prompt batches
  TokenStep              split token instance: continuous (iteration-level) decode
  MixedStep              mixed-pool instance: prompts first, a request's token work
                         delayed by at most ``max_preemptions`` prompt batches in a row
  ColocatedStep          both phases, whole-prompt prefill prioritized (vLLM / Orca)
  ChunkedColocatedStep   both phases, decode + prompt chunks in one iteration under
                         a token budget (Sarathi-Serve)
"""

from __future__ import annotations

from typing import Protocol

from splitjax.scheduling.batchers import (ContinuousTokenBatcher, FCFSPromptBatcher,
                                          start_local_prefill)
from splitjax.scheduling.records import Chunk, Instance, Work, WorkKind

# Members as module constants: reading a global is cheaper than an Enum class attribute.
_PREFILL, _DECODE, _MIXED = WorkKind.PREFILL, WorkKind.DECODE, WorkKind.MIXED


class StepPolicy(Protocol):
  def next_work(self, inst: Instance, now: float) -> Work | None:
    """The next iteration for idle ``inst`` (allocating what it admits), or None.
    Work comes only from ``prompt_queue``, ``prefilling``, ``decode_queue`` and
    ``decoding`` (the coordinator skips the call when all four are empty)."""

  def repeats_decode(self, inst: Instance) -> bool:
    """Whether, right after a DECODE work of ``inst``, the next iteration would
    be the same decode batch again as long as no request finishes and nothing
    else changes on ``inst`` (what lets a simulator leap over iterations)."""


class _RepeatsDecode:
  """A policy whose decode batch, once chosen, is chosen again until a request
  finishes or the instance's queues change: admission needs a slot and KV that
  only a finish frees, and prompts already queued did not fit either."""

  def repeats_decode(self, inst: Instance) -> bool:
    return True


def _prefill_work(inst: Instance, batch: list, now: float) -> Work:
  moves = tuple(r for r in batch if r.token_instance != inst.name and r.output_tokens > 1)
  return Work(_PREFILL, inst, prefill=tuple(batch), transfers=moves, started_s=now)


def _decode_work(inst: Instance, admitted: list, now: float) -> Work | None:
  if not inst.decoding:
    return None
  return Work(_DECODE, inst, admitted=tuple(admitted),
              decode=tuple(inst.decoding.values()), started_s=now)


class PromptStep(_RepeatsDecode):
  """Prefill the next FCFS batch (prompt pool)."""

  def __init__(self, batcher: FCFSPromptBatcher):
    self.batcher = batcher

  def next_work(self, inst: Instance, now: float) -> Work | None:
    batch = self.batcher.next_batch(inst)
    return _prefill_work(inst, batch, now) if batch else None


class TokenStep(_RepeatsDecode):
  """Admit arrived requests that fit, then step every decoding request (token pool)."""

  def __init__(self, batcher: ContinuousTokenBatcher):
    self.batcher = batcher

  def next_work(self, inst: Instance, now: float) -> Work | None:
    return _decode_work(inst, self.batcher.admit(inst), now)


class MixedStep:
  """Mixed pool: prompts run first and preempt (delay) the token batch, but a
  request's token work is delayed by at most ``max_preemptions`` prompt batches
  in a row: once a decoding request has waited that many, the token batch runs
  next. Priority grows with the age of a request's pending token, which bounds
  its stall without ever blocking prompts for longer than one iteration;
  admission to decode is oldest first."""

  def __init__(self, prompts: FCFSPromptBatcher, tokens: ContinuousTokenBatcher,
               max_preemptions: int):
    if max_preemptions < 0:
      raise ValueError("max_preemptions must be >= 0")
    self.prompts, self.tokens, self.cap = prompts, tokens, max_preemptions

  def repeats_decode(self, inst: Instance) -> bool:
    """A decode step resets every row's stall: with prompts queued, the next
    iteration is theirs (unless they do not fit; counted as not repeating)."""
    return not inst.prompt_queue

  def next_work(self, inst: Instance, now: float) -> Work | None:
    overdue = any(r.stalled >= self.cap for r in inst.decoding.values())
    if inst.prompt_queue and not overdue:
      batch = self.prompts.next_batch(inst)
      if batch:
        for r in inst.decoding.values():
          r.preemptions += 1
          r.stalled += 1
        return _prefill_work(inst, batch, now)
    work = _decode_work(inst, self.tokens.admit(inst), now)
    for r in work.decode if work else ():
      r.stalled = 0
    return work


class ColocatedStep(_RepeatsDecode):
  """One instance, both phases, iteration-level batching with prefill priority
  (vLLM's default scheduler; Orca-style joins between iterations): a prompt
  batch runs whenever one can be admitted (a slot and prompt + output KV per
  prompt), otherwise every decoding request takes a step."""

  def __init__(self, batcher: FCFSPromptBatcher):
    self.batcher = batcher

  def next_work(self, inst: Instance, now: float) -> Work | None:
    batch = self.batcher.next_batch(inst)
    if batch:
      return _prefill_work(inst, batch, now)
    return _decode_work(inst, [], now)


class ChunkedColocatedStep(_RepeatsDecode):
  """Sarathi-Serve chunked prefill: every iteration carries all decoding
  requests (one token each) and fills the rest of ``token_budget`` with prompt
  chunks: first prompts already being chunked (FCFS), then new prompts that get
  a slot and their prompt + output KV. Decodes never stall behind a prompt."""

  def __init__(self, token_budget: int):
    if token_budget <= 0:
      raise ValueError("token_budget must be positive")
    self.budget = token_budget

  def next_work(self, inst: Instance, now: float) -> Work | None:
    decode = tuple(inst.decoding.values())
    room = self.budget - len(decode)
    chunks = []
    for r in inst.prefilling.values():
      if room <= 0:
        break
      n = min(room, r.prompt_tokens - r.prefilled)
      chunks.append(Chunk(r, r.prefilled, r.prefilled + n))
      room -= n
    q = inst.prompt_queue
    while room > 0 and q and inst.can_take_slot(q[0].total_tokens):
      r = q.popleft()
      start_local_prefill(inst, r)
      n = min(room, r.prompt_tokens)
      chunks.append(Chunk(r, 0, n))
      room -= n
    if chunks:
      return Work(_MIXED, inst, decode=decode, chunks=tuple(chunks), started_s=now)
    return _decode_work(inst, [], now)
