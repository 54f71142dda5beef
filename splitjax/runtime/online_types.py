"""Records of the online serving driver (``runtime.online``): what a caller
submits, what it is told back, limits, and the occupancy snapshot (no jax).

Callers hand a :class:`Generation` and a sink to ``OnlineEngine.submit``; the
engine thread calls the sink with one :class:`TokenEvent` per token, then
exactly one :class:`EndEvent`. Sinks run on the engine thread: they must be
fast and must not block (hand the event to another thread or event loop).
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from typing import Callable

from splitjax.config import SamplingConfig
from splitjax.metrics import RequestRecord
from splitjax.runtime.faults import FaultEvent
from splitjax.scheduling.records import Role, WorkKind


class EndReason(enum.Enum):
  """Why a request ended (the OpenAI ``finish_reason`` for the first two)."""
  LENGTH = "length"       # max_tokens emitted
  STOP = "stop"           # a stop token id (EOS) or the caller's own stop (``finish``)
  ABORTED = "aborted"     # the caller went away (``abort``)
  REJECTED = "rejected"   # refused by the coordinator at admission
  FAILED = "failed"       # executor error, could not be scheduled, or engine shut down


class InvalidRequest(ValueError):
  """The request can never be served as given (the message says why)."""


class Overloaded(RuntimeError):
  """Not accepted now (queue full, engine stopped); ``retryable`` says whether
  retrying later may help (HTTP 429) or not (503)."""

  def __init__(self, reason: str, retryable: bool = True):
    super().__init__(reason)
    self.reason, self.retryable = reason, retryable


@dataclasses.dataclass(frozen=True)
class Generation:
  """One request: prompt token ids, at most ``max_tokens`` new tokens,
  sampling, and token ids that end it (EOS; the stop token is emitted)."""
  prompt_ids: tuple[int, ...]
  max_tokens: int
  sampling: SamplingConfig = SamplingConfig()
  stop_ids: frozenset[int] = frozenset()


@dataclasses.dataclass(frozen=True)
class TokenEvent:
  """Token number ``index`` (0-based) of ``request_id``, emitted at ``at_s``."""
  request_id: int
  index: int
  token_id: int
  at_s: float


@dataclasses.dataclass(frozen=True)
class EndEvent:
  """The last event of a request; ``record`` holds its times and tokens."""
  request_id: int
  reason: EndReason
  detail: str
  record: RequestRecord


StreamEvent = TokenEvent | EndEvent
Sink = Callable[[StreamEvent], None]


@dataclasses.dataclass(frozen=True)
class ModelLimits:
  """What a request may ask of the cluster: ids in [0, vocab_size), a prompt of
  at most ``max_prompt_tokens`` and prompt + new tokens within ``max_context_tokens``."""
  vocab_size: int
  max_prompt_tokens: int
  max_context_tokens: int

  def check(self, gen: Generation) -> None:
    """Raises InvalidRequest naming the first problem of ``gen``."""
    n = len(gen.prompt_ids)
    if n == 0:
      raise InvalidRequest("empty prompt: at least one token is required")
    if gen.max_tokens < 1:
      raise InvalidRequest(f"max_tokens must be at least 1, got {gen.max_tokens}")
    if n > self.max_prompt_tokens:
      raise InvalidRequest(f"prompt of {n} tokens exceeds the longest prompt this server "
                           f"prefills ({self.max_prompt_tokens} tokens)")
    if n + gen.max_tokens > self.max_context_tokens:
      raise InvalidRequest(f"prompt of {n} tokens + max_tokens {gen.max_tokens} exceeds the "
                           f"context limit of {self.max_context_tokens} tokens")
    bad = [t for t in gen.prompt_ids if not 0 <= t < self.vocab_size]
    if bad:
      raise InvalidRequest(f"token id {bad[0]} is out of the vocabulary [0, {self.vocab_size})")


@dataclasses.dataclass(frozen=True)
class OnlineLimits:
  """Admission bounds and loop timing.

  max_waiting: accepted requests without a first token yet (the queue); a
    submit beyond it is refused (retryable).
  max_open: accepted requests not yet ended (queue + decoding).
  stall_s: nothing running, nothing startable and requests left for this long
    -> they fail as "could not be scheduled".
  sample_every_s: how often the occupancy snapshot is refreshed.
  idle_wait_s: longest sleep of an idle engine thread between checks.
  transfer_retries: a failed KV transfer is sent again this often, then its
    request is recomputed.
  """
  max_waiting: int = 64
  max_open: int = 256
  stall_s: float = 2.0
  sample_every_s: float = 0.2
  idle_wait_s: float = 0.05
  transfer_retries: int = 2

  def __post_init__(self):
    if self.max_waiting < 1 or self.max_open < self.max_waiting:
      raise ValueError(f"need 1 <= max_waiting <= max_open, got {self.max_waiting}, "
                       f"{self.max_open}")


@dataclasses.dataclass(frozen=True)
class InstanceSnapshot:
  """One instance's occupancy (tokens are KV tokens)."""
  name: str
  home: Role
  role: Role
  busy: bool
  queued_prompts: int
  queued_prompt_tokens: int
  transferring: int
  waiting_decode: int
  decoding: int
  kv_used_tokens: int
  kv_capacity_tokens: int


@dataclasses.dataclass(frozen=True)
class EngineSnapshot:
  """The cluster as the engine thread last saw it (read by other threads)."""
  t_s: float
  instances: tuple[InstanceSnapshot, ...]
  borrowings: int         # mixed-pool borrowings so far
  returns: int
  waiting: int            # accepted, no first token yet
  open: int               # accepted, not ended
  alive: bool = True


class EngineObserver:
  """Hooks the engine thread calls (default: nothing). Must be fast; may be
  called from the engine thread only."""

  def on_end(self, record: RequestRecord, reason: EndReason) -> None:
    """A request ended (every submitted request, once)."""

  def on_work(self, instance: str, kind: WorkKind, seconds: float) -> None:
    """``instance`` finished an iteration of ``kind`` that ran ``seconds``."""

  def on_transfer(self, nbytes: int, seconds: float) -> None:
    """A request's KV landed on its token instance (``seconds`` exposed after
    its first token)."""

  def on_fault(self, event: FaultEvent) -> None:
    """A fault happened or was handled (instance failed, request resubmitted,
    transfer retried or given up for recomputing)."""


class AdmissionGate:
  """Admission counters of an OnlineEngine, shared by callers and the engine
  thread (one lock): ``enter`` admits or raises Overloaded, ``first_token`` /
  ``leave`` count a request out, ``close`` refuses everything after."""

  def __init__(self, limits: OnlineLimits):
    self.limits, self.lock = limits, threading.Lock()
    self.waiting = self.open = 0
    self.next_id = 0
    self.closed = ""

  def enter(self, push: Callable[[int], None]) -> int:
    """A new request id, pushed while holding the lock, or Overloaded."""
    lim = self.limits
    with self.lock:
      if self.closed:
        raise Overloaded(f"engine stopped: {self.closed}", retryable=False)
      if self.waiting >= lim.max_waiting:
        raise Overloaded(f"queue full: {self.waiting} requests are waiting for a first token "
                         f"(limit {lim.max_waiting}); retry later")
      if self.open >= lim.max_open:
        raise Overloaded(f"server full: {self.open} requests in progress (limit "
                         f"{lim.max_open}); retry later")
      rid, self.next_id = self.next_id, self.next_id + 1
      self.waiting += 1
      self.open += 1
      push(rid)
      return rid

  def first_token(self) -> None:
    with self.lock:
      self.waiting -= 1

  def leave(self, had_first_token: bool) -> None:
    with self.lock:
      self.open -= 1
      if not had_first_token:
        self.waiting -= 1

  def close(self, reason: str) -> None:
    with self.lock:
      self.closed = reason
