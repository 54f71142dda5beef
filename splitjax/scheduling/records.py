"""Plain records the policies work on: requests and instances (no jax)."""

from __future__ import annotations

import collections
import dataclasses
import enum

from splitjax.scheduling.kv_memory import KVMemory


class Role(enum.Enum):
  """What an instance runs. MIXED instances are borrowed into the mixed pool."""
  PROMPT = "prompt"
  TOKEN = "token"
  MIXED = "mixed"
  COLOCATED = "colocated"


@dataclasses.dataclass
class Request:
  """A request as policies see it. ``generated`` counts emitted tokens (the
  first comes from prefill); the request is done at ``output_tokens``."""
  request_id: int
  arrival_s: float
  prompt_tokens: int
  output_tokens: int
  generated: int = 0
  preemptions: int = 0

  @property
  def total_tokens(self) -> int:
    return self.prompt_tokens + self.output_tokens

  @property
  def done(self) -> bool:
    return self.generated >= self.output_tokens


@dataclasses.dataclass
class Instance:
  """One model replica: its role, KV memory and queues.

  prompt_queue: requests routed here for prefill, FCFS.
  decode_queue: prefilled requests routed here for decode, waiting for a slot
    and KV memory (their tokens count as reserved for the router).
  decoding: requests holding a decode slot and their KV.
  """
  name: str
  home: Role
  kv: KVMemory
  decode_slots: int
  role: Role | None = None
  prompt_queue: collections.deque = dataclasses.field(default_factory=collections.deque)
  decode_queue: collections.deque = dataclasses.field(default_factory=collections.deque)
  decoding: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.role is None:
      self.role = self.home

  @property
  def pending_prompt_tokens(self) -> int:
    return sum(r.prompt_tokens for r in self.prompt_queue)

  @property
  def reserved_tokens(self) -> int:
    """KV tokens promised to requests routed here but not yet admitted."""
    return sum(r.total_tokens for r in self.decode_queue)

  @property
  def token_load(self) -> int:
    """Router's load measure for token instances: KV in use + reserved."""
    return self.kv.used_tokens + self.reserved_tokens

  @property
  def idle(self) -> bool:
    return not (self.prompt_queue or self.decode_queue or self.decoding)
