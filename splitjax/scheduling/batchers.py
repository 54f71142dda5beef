"""Machine-level batchers: which queued requests join the next iteration.

Both allocate what they admit (KV memory, decode slots) through the
instance, which checks before it commits, so memory is never over-committed.
"""

from __future__ import annotations

from splitjax.scheduling.records import Instance, Phase, Request

# Members as module constants: reading a global is cheaper than an Enum class attribute.
_PREFILLING, _DECODING = Phase.PREFILLING, Phase.DECODING


def start_local_prefill(inst: Instance, r: Request) -> None:
  """``r`` (decoded on ``inst`` too) takes its slot and prompt + output KV and
  starts prefilling here."""
  inst.incoming.pop(r.request_id, None)
  inst.take_slot(r)
  r.phase = _PREFILLING
  inst.prefilling[r.request_id] = r


class FCFSPromptBatcher:
  """First come, first served prompt batches of at most ``token_budget`` tokens.

  A prompt longer than the budget runs alone rather than starving. The batch
  also stops at ``max_batch`` prompts and at the first prompt (no skipping:
  strict FCFS) whose memory does not fit: a request decoded here needs a slot
  and KV for prompt + output; one decoded elsewhere needs KV for its prompt
  until the transfer lands.
  """

  def __init__(self, token_budget: int = 2048, max_batch: int = 16):
    if token_budget <= 0 or max_batch <= 0:
      raise ValueError("token_budget and max_batch must be positive")
    self.token_budget, self.max_batch = token_budget, max_batch

  def next_batch(self, inst: Instance) -> list[Request]:
    """Pops the next batch from ``inst.prompt_queue`` and allocates its memory."""
    batch: list[Request] = []
    tokens = 0
    q = inst.prompt_queue
    while q and len(batch) < self.max_batch:
      r = q[0]
      if batch and tokens + r.prompt_tokens > self.token_budget:
        break
      local = r.token_instance == inst.name
      if local and not inst.can_take_slot(r.total_tokens):
        break
      if not local and not inst.kv.can_allocate(r.prompt_tokens):
        break
      q.popleft()
      if local:
        start_local_prefill(inst, r)
      else:
        inst.kv.allocate(r.request_id, r.prompt_tokens)
        inst.held[r.request_id] = r
        r.phase = _PREFILLING
        inst.prefilling[r.request_id] = r
      batch.append(r)
      tokens += r.prompt_tokens
    return batch


class ContinuousTokenBatcher:
  """Iteration-level batching: admits waiting requests, oldest first, while a
  decode slot is free and the request's whole KV (prompt + output) fits."""

  def admit(self, inst: Instance) -> list[Request]:
    """Moves requests from ``decode_queue`` into ``decoding``; returns them."""
    admitted = []
    q = inst.decode_queue
    while q and inst.can_take_slot(q[0].total_tokens):
      r = q.popleft()
      inst.incoming.pop(r.request_id)
      inst.take_slot(r)
      r.phase = _DECODING
      inst.decoding[r.request_id] = r
      admitted.append(r)
    return admitted
