"""The coordinator: cluster state plus the policies that act on it (no jax).

Drivers call, in any order their clock dictates:

  reason = coord.submit(request)           # route + enqueue, or a rejection reason
  coord.rebalance()                        # mixed-pool borrowing / returns
  work = coord.next_work(instance, now)    # for an idle instance; marks it busy
  done = coord.complete(work)              # after the driver ran ``work``
  coord.transfer_done(request)             # after the KV of a request landed
  coord.fail(request, reason)              # give up on a request, freeing everything
  lost = coord.fail_instance(name)         # take an instance down (a fault) ...
  new = coord.resubmit(old)                # ... and re-route each request it touched

Requests only change hands through these calls, so every accepted request is
always in exactly one place until it finishes or fails.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Iterable, Sequence

from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.batchers import ContinuousTokenBatcher, FCFSPromptBatcher
from splitjax.scheduling.mixed_pool import MixedPool, RoleChange
from splitjax.scheduling.records import Instance, Phase, Request, Role, Work
from splitjax.scheduling.router import Candidates, ColocatedJSQRouter, JSQRouter, NoInstanceError
from splitjax.scheduling.steps import (ChunkedColocatedStep, ColocatedStep, MixedStep,
                                       PromptStep, StepPolicy, TokenStep)
from splitjax.serve_config import ClusterPolicy, SchedulerConfig

# Members as module constants: reading a global is cheaper than an Enum class attribute.
_DOWN = Role.DOWN
_QUEUED, _TRANSFERRING, _WAITING_DECODE, _DECODING, _FINISHED = (
    Phase.QUEUED, Phase.TRANSFERRING, Phase.WAITING_DECODE, Phase.DECODING, Phase.FINISHED)


@dataclasses.dataclass
class Policies:
  """The policy objects of one cluster: a router, a step policy per role and
  (SPLIT with a mixed pool) the pool manager."""
  router: JSQRouter | ColocatedJSQRouter
  steps: dict[Role, StepPolicy]
  mixed_pool: MixedPool | None = None


def make_policies(cfg: SchedulerConfig) -> Policies:
  """The policies ``cfg.policy`` names (the one place that maps the enum)."""
  prompts = FCFSPromptBatcher(cfg.prompt_token_budget, cfg.max_prefill_batch)
  tokens = ContinuousTokenBatcher()
  if cfg.policy == ClusterPolicy.SPLIT:
    pool = (MixedPool(cfg.borrow_prompt_tokens, cfg.borrow_kv_fraction)
            if cfg.mixed_pool else None)
    return Policies(JSQRouter(), {Role.PROMPT: PromptStep(prompts), Role.TOKEN: TokenStep(tokens),
                                  Role.MIXED: MixedStep(prompts, tokens, cfg.max_preemptions)},
                    pool)
  if cfg.policy == ClusterPolicy.COLOCATED:
    return Policies(ColocatedJSQRouter(), {Role.COLOCATED: ColocatedStep(prompts)})
  return Policies(ColocatedJSQRouter(),
                  {Role.COLOCATED: ChunkedColocatedStep(cfg.chunk_token_budget)})


def home_roles(cfg: SchedulerConfig, num_prompt: int, num_token: int,
               num_colocated: int) -> list[Role]:
  """Home role of every instance, in device order."""
  if cfg.policy == ClusterPolicy.SPLIT:
    return [Role.PROMPT] * num_prompt + [Role.TOKEN] * num_token
  return [Role.COLOCATED] * num_colocated


def make_instances(roles: Sequence[Role], decode_slots: int, kv_capacity_tokens: int,
                   max_request_tokens: int, block_tokens: int = 16) -> list[Instance]:
  """Instances named ``<home role><index in that role>`` (``prompt0``, ``token1``...)."""
  seen: dict[Role, int] = {}
  out = []
  for role in roles:
    n = seen[role] = seen.get(role, -1) + 1
    out.append(Instance(f"{role.value}{n}", role, KVMemory(kv_capacity_tokens, block_tokens),
                        decode_slots, max_request_tokens))
  return out


@dataclasses.dataclass(slots=True)
class Completion:
  """What a finished Work did. ``emitted``: requests that got tokens (one, or
  ``work.steps`` for decode rows; in work order); ``finished``: requests now
  complete; ``transfers``: requests whose KV must now reach their token instance."""
  emitted: list[Request] = dataclasses.field(default_factory=list)
  finished: list[Request] = dataclasses.field(default_factory=list)
  transfers: list[Request] = dataclasses.field(default_factory=list)


class Coordinator:
  """Cluster state (instances, requests) and its policies."""

  def __init__(self, instances: Sequence[Instance], policies: Policies, max_prompt_tokens: int):
    names = [i.name for i in instances]
    if len(set(names)) != len(names):
      raise ValueError(f"instance names must be unique: {names}")
    self.instances = list(instances)
    self.by_name = {i.name: i for i in instances}
    self.policies = policies
    self._steps = policies.steps
    self._pool = policies.mixed_pool
    self.max_prompt_tokens = max_prompt_tokens
    self.role_changes: list[RoleChange] = []
    # Who takes prompts / tokens: changes only in rebalance (roles, returning).
    self._candidates = Candidates.of(self.instances)

  # ---------------------------------------------------------------- arrival
  def submit(self, r: Request) -> str | None:
    """Routes ``r`` and enqueues it; returns None, or why it is rejected
    (then nothing was changed)."""
    return self._submit(r, by_age=False)

  def _submit(self, r: Request, by_age: bool) -> str | None:
    """submit(); ``by_age``: join the prompt queue in arrival order, not last."""
    if r.prompt_tokens <= 0 or r.output_tokens <= 0:
      return f"prompt ({r.prompt_tokens}) and output ({r.output_tokens}) tokens must be positive"
    if r.prompt_tokens > self.max_prompt_tokens:
      return (f"prompt of {r.prompt_tokens} tokens exceeds the longest prompt an instance "
              f"prefills ({self.max_prompt_tokens})")
    try:
      p, t = self.policies.router.choose(r, self._candidates)
    except NoInstanceError as e:
      return str(e)
    r.prompt_instance, r.token_instance, r.phase = p.name, t.name, _QUEUED
    if by_age:
      _insert_by_age(p.prompt_queue, r)
    else:
      p.prompt_queue.append(r)
    t.incoming[r.request_id] = r
    return None

  # ---------------------------------------------------------------- pools
  def rebalance(self) -> list[RoleChange]:
    """Mixed-pool borrowing and returns (no-op without a mixed pool)."""
    pool = self._pool
    if pool is None:
      return []
    changes = pool.rebalance(self.instances)
    if changes or pool.flags_changed:       # roles or ``returning`` flags moved
      self._candidates = Candidates.of(self.instances)
      self.role_changes.extend(changes)
    return changes

  # ---------------------------------------------------------------- iterations
  def next_work(self, inst: Instance, now: float) -> Work | None:
    """The next iteration for ``inst`` (which must not be busy), or None."""
    if inst.busy:
      raise ValueError(f"instance {inst.name} is busy")
    if not (inst.prompt_queue or inst.decode_queue or inst.decoding or inst.prefilling):
      return None                   # step policies make work only from these
    if inst.role is _DOWN:
      return None
    work = self._steps[inst.role].next_work(inst, now)
    if work is not None:
      inst.busy = True
    return work

  def repeats_decode(self, inst: Instance) -> bool:
    """Whether ``inst``'s step policy would run its decode batch again next
    iteration if nothing changed (``StepPolicy.repeats_decode``; simulators
    leap over such iterations)."""
    return self._steps[inst.role].repeats_decode(inst)

  def complete(self, work: Work) -> Completion:
    """Applies a finished ``work``: tokens emitted, phases advanced, memory of
    finished requests freed."""
    inst, out = work.instance, Completion([], [], [])
    inst.busy = False
    finished = _FINISHED                 # a request failed while the work ran is skipped
    for r in work.prefill:
      if r.phase is not finished:
        r.prefilled = r.prompt_tokens
        self._prefilled(inst, r, out)
    for c in work.chunks:
      if c.request.phase is not finished:
        c.request.prefilled = c.end
        if c.last:
          self._prefilled(inst, c.request, out)
        else:
          inst.prefilling.reweigh(c.request.request_id)
    steps, emitted = work.steps, out.emitted
    for r in work.decode:
      if r.phase is not finished:
        r.generated += steps
        emitted.append(r)
        if r.generated >= r.output_tokens:            # r.done
          del inst.decoding[r.request_id]
          inst.give_back_slot(r)
          self._finished(r, out)
    return out

  def _prefilled(self, inst: Instance, r: Request, out: Completion) -> None:
    del inst.prefilling[r.request_id]
    r.generated = 1
    out.emitted.append(r)
    local = r.token_instance == inst.name
    if r.done:
      if local:
        inst.give_back_slot(r)
      else:
        self._drop_held(inst, r)
        self.by_name[r.token_instance].incoming.pop(r.request_id)
      self._finished(r, out)
    elif local:
      r.phase = _DECODING
      inst.decoding[r.request_id] = r
    else:
      r.phase = _TRANSFERRING
      out.transfers.append(r)

  def transfer_done(self, r: Request) -> None:
    """``r``'s KV reached its token instance: free the prompt side, queue for
    decode (oldest first)."""
    if r.phase is not _TRANSFERRING:
      raise ValueError(f"request {r.request_id} is {r.phase.value}, not transferring")
    self._drop_held(self.by_name[r.prompt_instance], r)
    r.phase = _WAITING_DECODE
    q = self.by_name[r.token_instance].decode_queue
    keys = [(x.arrival_s, x.request_id) for x in q]
    q.insert(bisect.bisect(keys, (r.arrival_s, r.request_id)), r)

  def fail(self, r: Request, reason: str = "") -> None:
    """Removes ``r`` from every queue and frees what it holds (any phase)."""
    for inst in (self.by_name.get(r.prompt_instance), self.by_name.get(r.token_instance)):
      if inst is None:
        continue
      for q in (inst.prompt_queue, inst.decode_queue):
        if r in q:
          q.remove(r)
      inst.prefilling.pop(r.request_id, None)
      inst.incoming.pop(r.request_id, None)
      inst.decoding.pop(r.request_id, None)
      if inst.held.get(r.request_id) is r:
        self._drop_held(inst, r)
      if r.slot is not None and inst.name == r.token_instance:
        inst.give_back_slot(r)
    r.phase = Phase.FINISHED

  # ---------------------------------------------------------------- faults
  def fail_instance(self, name: str) -> list[Request]:
    """Takes instance ``name`` down (``Role.DOWN``: from now on it takes
    neither prompts nor tokens, is never borrowed, and ``next_work`` gives it
    nothing); the mixed pool (if any) then covers a pool left with no instance.

    Returns every unfinished request that had state on it (queued, prefilling,
    held KV / transferring, reserved, waiting or decoding), oldest first,
    unchanged: the caller must ``resubmit`` or ``fail`` each one, which frees
    what it holds here. Raises KeyError for an unknown name, ValueError if the
    instance is already down.
    """
    inst = self.by_name[name]
    if inst.role is Role.DOWN:
      raise ValueError(f"instance {name} is already down")
    lost: dict[int, Request] = {}
    for group in (inst.prompt_queue, inst.prefilling.values(), inst.held.values(),
                  inst.incoming.values(), inst.decode_queue, inst.decoding.values()):
      for r in group:
        lost.setdefault(r.request_id, r)
    inst.role, inst.returning, inst.busy = Role.DOWN, False, False
    self._candidates = Candidates.of(self.instances)
    self.rebalance()                      # borrow for a pool that lost every instance
    return sorted(lost.values(), key=lambda r: (r.arrival_s, r.request_id))

  def resubmit(self, old: Request) -> Request | str:
    """Recomputes an unfinished request elsewhere: fails ``old`` (as ``fail``:
    FINISHED, everything it holds freed, so work still in flight skips it) and
    routes a new Request with the same id and arrival whose prompt is old's
    prompt plus the tokens it emitted (``resumed`` counts every emitted token
    so far) and whose output is what is left. It joins its prompt queue in
    arrival order. Returns the new request, or why it was rejected (``old`` is
    failed either way). Raises ValueError if ``old`` already finished."""
    if old.phase is Phase.FINISHED:
      raise ValueError(f"request {old.request_id} already finished")
    self.fail(old, "resubmitted")
    new = Request(old.request_id, old.arrival_s, old.prompt_tokens + old.generated,
                  old.output_tokens - old.generated, preemptions=old.preemptions,
                  resumed=old.resumed + old.generated)
    reason = self._submit(new, by_age=True)
    return new if reason is None else reason

  @staticmethod
  def _drop_held(inst: Instance, r: Request) -> None:
    del inst.held[r.request_id]
    inst.kv.free(r.request_id)

  @staticmethod
  def _finished(r: Request, out: Completion) -> None:
    r.phase = _FINISHED
    out.finished.append(r)

  # ---------------------------------------------------------------- state
  @property
  def idle(self) -> bool:
    return all(i.idle for i in self.instances)

  def requests_in_flight(self) -> Iterable[Request]:
    """Every accepted request not yet finished (each once)."""
    seen: dict[int, Request] = {}
    for i in self.instances:
      for group in (i.prompt_queue, i.prefilling.values(), i.incoming.values(), i.decode_queue,
                    i.decoding.values(), i.held.values()):
        for r in group:
          seen.setdefault(r.request_id, r)
    return seen.values()


def _insert_by_age(q, r: Request) -> None:
  """Puts ``r`` into prompt queue ``q`` before the first younger request."""
  key = (r.arrival_s, r.request_id)
  for n, x in enumerate(q):
    if (x.arrival_s, x.request_id) > key:
      q.insert(n, r)
      return
  q.append(r)
