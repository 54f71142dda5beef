"""Cluster router and machine-level batchers (Splitwise's default policies).

Each policy is one small class; the runtime and the simulator call them with
instances and queues and act on what they return.
"""

from __future__ import annotations

from typing import Sequence

from splitjax.scheduling.records import Instance, Request


class JSQRouter:
  """Join-the-shortest-queue on pending tokens, choosing both instances at once.

  Prompt instances are compared by pending prompt tokens, token instances by
  KV tokens in use plus reserved; ties go to the first by name.
  """

  def route(self, request: Request, prompt_pool: Sequence[Instance],
            token_pool: Sequence[Instance]) -> tuple[Instance, Instance]:
    if not prompt_pool or not token_pool:
      raise ValueError("routing needs at least one prompt and one token instance")
    fits = [t for t in token_pool if t.kv.fits_ever(request.total_tokens)]
    if not fits:
      raise ValueError(f"request {request.request_id} ({request.total_tokens} tokens) fits "
                       "no token instance's KV memory")
    prompt = min(prompt_pool, key=lambda i: (i.pending_prompt_tokens, i.name))
    token = min(fits, key=lambda i: (i.token_load, i.name))
    return prompt, token


class FCFSPromptBatcher:
  """First come, first served prompt batches of at most ``token_budget`` tokens.

  A prompt longer than the budget runs alone rather than starving. The
  batch also stops at ``max_batch`` prompts and at the first prompt whose KV
  does not fit the instance's free memory (its KV lives there until sent).
  """

  def __init__(self, token_budget: int = 2048, max_batch: int = 64):
    if token_budget <= 0 or max_batch <= 0:
      raise ValueError("token_budget and max_batch must be positive")
    self.token_budget, self.max_batch = token_budget, max_batch

  def next_batch(self, inst: Instance) -> list[Request]:
    """Pops the next batch from ``inst.prompt_queue`` and allocates its KV."""
    batch: list[Request] = []
    tokens = 0
    q = inst.prompt_queue
    while q and len(batch) < self.max_batch:
      r = q[0]
      if batch and tokens + r.prompt_tokens > self.token_budget:
        break
      if not inst.kv.can_allocate(r.prompt_tokens):
        break
      q.popleft()
      inst.kv.allocate(r.request_id, r.prompt_tokens)
      batch.append(r)
      tokens += r.prompt_tokens
    return batch


class ContinuousTokenBatcher:
  """Iteration-level batching: admits waiting requests, FCFS, while a decode
  slot is free and the request's whole KV (prompt + output) fits; never
  over-commits memory, so no request is ever evicted for lack of it."""

  def admit(self, inst: Instance) -> list[Request]:
    """Moves requests from ``decode_queue`` to ``decoding``; returns them."""
    admitted = []
    q = inst.decode_queue
    while q and len(inst.decoding) < inst.decode_slots and inst.kv.can_allocate(q[0].total_tokens):
      r = q.popleft()
      inst.kv.allocate(r.request_id, r.total_tokens)
      inst.decoding[r.request_id] = r
      admitted.append(r)
    return admitted

  def finish(self, inst: Instance, request: Request) -> None:
    """Frees the slot and KV of a request that is done (or failed)."""
    del inst.decoding[request.request_id]
    inst.kv.free(request.request_id)
