"""Plain records the policies work on: requests, instances, work units (no jax).

A request moves through :class:`Phase` s; an instance holds queues, decode
slots and KV memory; a :class:`Work` is one iteration a policy asks an
instance to run (a prefill batch, a decode step, or a mixed chunked step).
Drivers (the real runtime, the simulator, test fakes) execute Work and report
back to the coordinator; they never change these records themselves.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import operator

from splitjax.scheduling.containers import TokenDeque, TokenDict
from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.tally import Tally


class Role(enum.Enum):
  """What an instance runs now. MIXED instances were borrowed into the mixed
  pool; DOWN ones failed (``Coordinator.fail_instance``) and take no work."""
  PROMPT = "prompt"
  TOKEN = "token"
  MIXED = "mixed"
  COLOCATED = "colocated"
  DOWN = "down"

  # Members are singletons compared by identity: hash them by identity too
  # (Enum's own hash is a Python-level call, and these key hot dict lookups).
  __hash__ = object.__hash__


class Phase(enum.Enum):
  """Where a request is in its life."""
  QUEUED = "queued"                  # in a prompt queue
  PREFILLING = "prefilling"          # in a running prefill, or between prompt chunks
  TRANSFERRING = "transferring"      # KV on its way to the token instance
  WAITING_DECODE = "waiting_decode"  # KV arrived; waiting for a slot and KV memory
  DECODING = "decoding"              # holds a decode slot
  FINISHED = "finished"              # completed or failed; holds nothing

  __hash__ = object.__hash__         # see Role


@dataclasses.dataclass(eq=False, slots=True)
class Request:
  """A request as policies see it.

  ``generated`` counts emitted tokens (the first comes from prefill); the
  request is done at ``output_tokens``. ``prefilled`` counts prompt tokens
  whose KV exists (chunked prefill advances it chunk by chunk).
  ``prompt_instance`` / ``token_instance`` are instance names fixed by the
  router; ``slot`` is the decode slot held on the token instance.
  ``resumed``: tokens emitted by earlier attempts of this request (a request
  resubmitted after a fault, ``Coordinator.resubmit``): its prompt ends with
  them, and its ``output_tokens`` are the ones still to come.
  """
  request_id: int
  arrival_s: float
  prompt_tokens: int
  output_tokens: int
  generated: int = 0
  prefilled: int = 0
  preemptions: int = 0      # prompt batches that delayed its token work, in all
  stalled: int = 0          # ... since its last token (the mixed pool caps this)
  phase: Phase = Phase.QUEUED
  prompt_instance: str = ""
  token_instance: str = ""
  slot: int | None = None
  resumed: int = 0

  @property
  def total_tokens(self) -> int:
    return self.prompt_tokens + self.output_tokens

  @property
  def done(self) -> bool:
    return self.generated >= self.output_tokens


def _prompt_tokens(r: Request) -> int:
  return r.prompt_tokens


def _prompt_left(r: Request) -> int:
  return r.prompt_tokens - r.prefilled


def _total_tokens(r: Request) -> int:
  return r.total_tokens


def _no_tokens(r: Request) -> int:
  return 0


@dataclasses.dataclass(eq=False)
class Instance:
  """One model replica: role, KV memory, decode slots and queues.

  prompt_queue: requests routed here for prefill, FCFS.
  prefilling: requests in a running prefill, or holding a slot between chunks.
  incoming: requests routed here for decode and not yet admitted (their
    prompt + output tokens count as reserved for the router).
  decode_queue: requests whose KV has arrived, waiting for a slot + memory.
  decoding: requests holding a decode slot (and KV for prompt + output).
  held: prompt-side KV kept until its transfer lands (request id -> request).
  max_request_tokens: longest prompt + output one slot can hold.
  free_slots: free decode slot numbers, a heap (``heapq``: the lowest first).
  role, returning: assigning either reports a change to the watchers.
  busy: a Work is running on this instance.
  returning: a borrowed (MIXED) instance that takes no new foreign work.
  """
  name: str
  home: Role
  kv: KVMemory
  decode_slots: int
  max_request_tokens: int
  role: Role | None = None
  prompt_queue: TokenDeque = dataclasses.field(
      default_factory=lambda: TokenDeque(_prompt_tokens))
  prefilling: TokenDict = dataclasses.field(default_factory=lambda: TokenDict(_prompt_left))
  incoming: TokenDict = dataclasses.field(default_factory=lambda: TokenDict(_total_tokens))
  decode_queue: collections.deque = dataclasses.field(default_factory=collections.deque)
  decoding: TokenDict = dataclasses.field(default_factory=lambda: TokenDict(_no_tokens))
  held: dict = dataclasses.field(default_factory=dict)
  free_slots: list = dataclasses.field(default_factory=list)
  busy: bool = False
  returning: bool = False
  # Sets this instance adds itself to whenever its role, queues or KV change
  # (registered by whoever caches loads: the mixed pool, the router); not
  # part of the state.
  watchers: list[set] = dataclasses.field(default_factory=list, repr=False)
  # ... and sets it adds itself to when its role changes (also a change above).
  role_watchers: list[set] = dataclasses.field(default_factory=list, repr=False)

  def __post_init__(self):
    if self.role is None:
      self.role = self.home
    self.free_slots = list(range(self.decode_slots))     # a heap (heapq): lowest first
    for tracked in (self.prompt_queue, self.prefilling, self.incoming, self.decoding, self.kv):
      tracked.notify = self._changed

  def _changed(self) -> None:
    for w in self.watchers:
      w.add(self)

  def feed(self, prompt: Tally, kv: Tally, rows: Tally) -> None:
    """Adds this instance's loads to these tallies from now on (moving what it
    holds now out of the ones it fed before): ``prompt``: pending prompt tokens
    (queued + prefilling); ``kv``: KV tokens in use (whole blocks) + reserved
    (``incoming``); ``rows``: requests decoding + incoming. A watcher pointing
    many instances at one set of tallies keeps cluster sums in O(1) per change."""
    for container, new in ((self.prompt_queue, prompt), (self.prefilling, prompt),
                           (self.incoming, kv)):
      container.tally.value -= container.tokens
      container.tally = new
      new.value += container.tokens
    kv_held = self.kv.used_blocks * self.kv.block_tokens
    self.kv.tally.value -= kv_held
    self.kv.tally = kv
    kv.value += kv_held
    for container in (self.incoming, self.decoding):
      container.rows.value -= len(container)
      container.rows = rows
      rows.value += len(container)

  # ---------------------------------------------------------------- loads
  @property
  def pending_prompt_tokens(self) -> int:
    """Prompt tokens queued or being prefilled here (router's prompt load)."""
    return self.prompt_queue.tokens + self.prefilling.tokens

  @property
  def reserved_tokens(self) -> int:
    """KV tokens promised to requests routed here but not yet admitted."""
    return self.incoming.tokens

  @property
  def token_load(self) -> int:
    """Router's load measure for token instances: KV in use + reserved."""
    kv = self.kv
    return kv.used_blocks * kv.block_tokens + self.incoming.tokens

  @property
  def token_pressure(self) -> float:
    """How full the decode side is, 0..1+: the larger of KV (in use + reserved)
    over capacity and requests (decoding + reserved) over decode slots. Slots
    bind first with short requests on a dense per-slot cache, KV with long
    ones on a paged one; comparing tokens alone would send work to an
    instance whose slots are all taken."""
    kv, incoming = self.kv, self.incoming
    return max((kv.used_blocks * kv.block_tokens + incoming.tokens) / kv.total_tokens,
               (len(self.decoding) + len(incoming)) / self.decode_slots)

  @property
  def outstanding(self) -> int:
    """Requests routed here and not finished (queued, prefilling, decoding)."""
    return len(self.incoming) + len(self.prefilling) + len(self.decoding)

  @property
  def takes_prompts(self) -> bool:
    if self.role == Role.MIXED:
      return not (self.returning and self.home == Role.TOKEN)
    return self.role in (Role.PROMPT, Role.COLOCATED)

  @property
  def takes_tokens(self) -> bool:
    if self.role == Role.MIXED:
      return not (self.returning and self.home == Role.PROMPT)
    return self.role in (Role.TOKEN, Role.COLOCATED)

  def fits_ever(self, request: Request) -> bool:
    """Whether ``request`` could ever decode here (one slot and empty memory)."""
    return (request.total_tokens <= self.max_request_tokens
            and self.kv.fits_ever(request.total_tokens))

  @property
  def idle(self) -> bool:
    return not (self.busy or self.prompt_queue or self.prefilling or self.incoming
                or self.decode_queue or self.decoding or self.held)

  # ---------------------------------------------------------------- slots
  def can_take_slot(self, tokens: int) -> bool:
    """A free decode slot and KV memory for ``tokens`` (never over-commits)."""
    return bool(self.free_slots) and self.kv.can_allocate(tokens)

  def take_slot(self, request: Request) -> None:
    """Gives ``request`` the lowest free slot and KV for its prompt + output."""
    self.kv.allocate(request.request_id, request.total_tokens)
    request.slot = heapq.heappop(self.free_slots)

  def give_back_slot(self, request: Request) -> None:
    self.kv.free(request.request_id)
    heapq.heappush(self.free_slots, request.slot)
    request.slot = None


def _tracked(name: str, *lists: str) -> property:
  """An Instance attribute whose every assignment reports a change to the
  instance's watchers (who takes which work depends on it), and to the
  watcher ``lists`` named."""
  slot = "_" + name
  lists = ("watchers",) + lists

  def set_(self, value):
    state = self.__dict__
    state[slot] = value
    for watchers in lists:
      for w in state.get(watchers, ()):
        w.add(self)
  return property(operator.attrgetter(slot), set_, doc=f"{name} (assignments notify the watchers)")


# After the dataclass is built: its __init__ assigns these through the properties.
Instance.role = _tracked("role", "role_watchers")
Instance.returning = _tracked("returning")


class WorkKind(enum.Enum):
  PREFILL = "prefill"   # whole prompts, one batch (split, mixed and co-located)
  DECODE = "decode"     # one token for every decoding request
  MIXED = "mixed"       # decode step + prompt chunks in one iteration (chunked prefill)

  __hash__ = object.__hash__         # see Role


@dataclasses.dataclass(frozen=True, eq=False, slots=True)
class Chunk:
  """Prompt tokens [start, end) of ``request`` computed in one MIXED step."""
  request: Request
  start: int
  end: int

  @property
  def last(self) -> bool:
    return self.end == self.request.prompt_tokens


@dataclasses.dataclass(eq=False, slots=True)
class Work:
  """One iteration for ``instance`` to run.

  prefill: whole prompts (PREFILL). Requests whose ``token_instance`` is this
    instance already hold a slot here: their KV goes straight into it.
  transfers: the subset of ``prefill`` whose KV must move to another instance.
  admitted: requests given a slot at the start of this step; their arrived KV
    must be inserted before decoding (DECODE / MIXED).
  decode: requests that advance one token per step (DECODE / MIXED).
  chunks: prompt chunks (MIXED); a chunk's request holds its slot here.
  steps: decode iterations this Work stands for. Only a simulator leaping over
    iterations whose batch cannot change sets it above 1 (DECODE only, and
    never past the first finishing request).
  """
  kind: WorkKind
  instance: Instance
  prefill: tuple = ()
  transfers: tuple = ()
  admitted: tuple = ()
  decode: tuple = ()
  chunks: tuple = ()
  started_s: float = 0.0
  steps: int = 1

  @property
  def prompt_tokens(self) -> int:
    return sum(r.prompt_tokens for r in self.prefill) + sum(c.end - c.start for c in self.chunks)
