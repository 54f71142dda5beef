"""KV-cache memory of one instance, accounted in fixed-size blocks of tokens.

``can_allocate`` is separate from ``allocate`` so a policy can ask before it
commits; ``allocate`` on a request that does not fit raises instead of
over-committing. Capacity is in tokens (bytes / model.kv_bytes_per_token()).
"""

from __future__ import annotations

import dataclasses

from splitjax.scheduling.tally import Tally


class KVMemoryError(RuntimeError):
  """An allocation that does not fit, or a double allocate / free."""


@dataclasses.dataclass
class KVMemory:
  """Block accounting for ``capacity_tokens`` of KV on one instance.

  Each request holds ceil(tokens / block_tokens) blocks: reserve the whole
  prompt + output up front (no preemption needed for memory) or grow later.
  ``total_blocks`` (fixed) and ``used_blocks`` (the sum of what requests hold)
  are plain attributes for cheap reads; only ``allocate`` / ``free`` change
  ``used_blocks``.
  """
  capacity_tokens: int
  block_tokens: int = 16
  _held: dict[int, int] = dataclasses.field(default_factory=dict)  # request id -> blocks
  used_blocks: int = dataclasses.field(default=0, init=False)

  def __post_init__(self):
    if self.capacity_tokens <= 0 or self.block_tokens <= 0:
      raise ValueError("capacity_tokens and block_tokens must be positive")
    self.total_blocks = self.capacity_tokens // self.block_tokens   # capacity is fixed
    self.total_tokens = self.total_blocks * self.block_tokens        # ... in whole blocks
    self.notify = lambda: None      # called after every change (Instance change tracking)
    self.tally = Tally()            # tokens of the blocks held, added as they change

  @property
  def free_blocks(self) -> int:
    return self.total_blocks - self.used_blocks

  @property
  def used_tokens(self) -> int:
    return self.used_blocks * self.block_tokens

  def blocks_for(self, tokens: int) -> int:
    return -(-tokens // self.block_tokens)

  def fits_ever(self, tokens: int) -> bool:
    """Whether ``tokens`` could fit on an empty instance."""
    return self.blocks_for(tokens) <= self.total_blocks

  def can_allocate(self, tokens: int) -> bool:
    return -(-tokens // self.block_tokens) <= self.total_blocks - self.used_blocks

  def allocate(self, request_id: int, tokens: int) -> None:
    if request_id in self._held:
      raise KVMemoryError(f"request {request_id} already holds KV memory")
    blocks = -(-tokens // self.block_tokens)
    if blocks > self.total_blocks - self.used_blocks:
      raise KVMemoryError(f"request {request_id} needs {blocks} blocks, "
                          f"{self.free_blocks} free")
    self._held[request_id] = blocks
    self.used_blocks += blocks
    self.tally.value += blocks * self.block_tokens
    self.notify()

  def free(self, request_id: int) -> None:
    blocks = self._held.pop(request_id, None)
    if blocks is None:
      raise KVMemoryError(f"request {request_id} holds no KV memory")
    self.used_blocks -= blocks
    self.tally.value -= blocks * self.block_tokens
    self.notify()

  def holds(self, request_id: int) -> bool:
    return request_id in self._held
