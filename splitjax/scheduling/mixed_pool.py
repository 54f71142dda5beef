"""Splitwise's mixed pool: borrow instances across pools under pressure.

Prompt pressure is the mean pending prompt tokens per instance serving
prompts (the prompt pool plus the mixed pool); token pressure is the mean
``Instance.token_pressure`` (KV in use + reserved over capacity, or decode
slots if tighter) of instances serving tokens (the token pool plus the mixed
pool). While one passes its limit
(``borrow_prompt_tokens`` / ``borrow_kv_fraction``), the least-loaded instance
of the other pool joins the mixed pool and runs both phases (see
``steps.MixedStep``); each home pool always keeps one instance of its own.
At or below half the limit, borrowed instances take no new foreign work, and
each goes home once that work has drained (if the pressure stays at or below
half the limit without it).

``rebalance`` is a function of the cluster state: it borrows and returns
until nothing more changes, so calling it again without a state change does
nothing. That makes the result independent of how often a driver calls it
(the real runtime every poll, the simulator after every event, in stepping
or leap mode alike).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from splitjax.scheduling.records import Instance, Role


@dataclasses.dataclass(frozen=True)
class RoleChange:
  instance: str
  old: Role
  new: Role


class MixedPool:
  """Decides borrowings and returns; call :meth:`rebalance` between iterations."""

  def __init__(self, borrow_prompt_tokens: int, borrow_kv_fraction: float):
    if borrow_prompt_tokens <= 0 or not 0.0 < borrow_kv_fraction <= 1.0:
      raise ValueError("borrow_prompt_tokens must be > 0 and borrow_kv_fraction in (0, 1]")
    self.prompt_limit, self.kv_limit = borrow_prompt_tokens, borrow_kv_fraction
    # Per-instance (role, load: pending prompt tokens of a prompt instance,
    # token pressure of a token instance), refreshed only for instances that
    # reported a change (Instance.watchers), and running totals over them, so
    # the common "nothing to do" check costs O(changes).
    self._bound: Sequence[Instance] | None = None
    self._loads: dict[Instance, tuple] = {}
    self._stale: set[Instance] = set()
    self._prompt_sum = self._n_prompt = self._n_token = self._n_mixed = 0
    self._pressure_sum = 0.0
    # The last rebalance found no mixed pool and no pressure (changed nothing,
    # not even ``returning`` flags).
    self.quiet = True

  def _pressure(self, lender: Role, serving: Sequence[Instance]) -> float:
    """Pressure on the phase that instances of home ``lender`` are lent to."""
    if not serving:
      return 0.0
    if lender == Role.TOKEN:
      return sum(i.pending_prompt_tokens for i in serving) / len(serving) / self.prompt_limit
    return sum(i.token_pressure for i in serving) / len(serving) / self.kv_limit

  @staticmethod
  def _serving(instances: Sequence[Instance], lender: Role, skip=None) -> list[Instance]:
    """Instances serving the phase ``lender``'s instances are lent to: that
    phase's own pool plus the whole mixed pool (which serves both phases)."""
    own = Role.PROMPT if lender == Role.TOKEN else Role.TOKEN
    return [i for i in instances if i is not skip and i.role in (own, Role.MIXED)]

  def _bind(self, instances: Sequence[Instance]) -> None:
    if self._bound is instances:
      return
    for i in self._bound or ():
      i.watchers.remove(self._stale)
    self._bound, self._loads, self._stale = instances, {}, set(instances)
    self.quiet = False
    self._prompt_sum = self._n_prompt = self._n_token = self._n_mixed = 0
    self._pressure_sum = 0.0
    for i in instances:
      i.watchers.append(self._stale)

  def _quiet(self, instances: Sequence[Instance]) -> bool:
    """No mixed pool and no pressure: nothing to do (the common case).

    A pure function of the cluster state: the running float sum of token
    pressures decides only when it is clearly on one side of the limit (its
    rounding drift is far below the 1e-6 margin); near the limit the exact
    (order-independent) ``math.fsum`` of the cached values decides.
    """
    self._bind(instances)
    if not self._stale:
      return self.quiet                # nothing changed since the last answer
    loads, prompt, token = self._loads, Role.PROMPT, Role.TOKEN
    for i in self._stale:      # (role, load): a prompt's pending tokens, a token's pressure
      old = loads.get(i)
      if old is not None:
        role, load = old
        if role is prompt:
          self._prompt_sum -= load
          self._n_prompt -= 1
        elif role is token:
          self._pressure_sum -= load
          self._n_token -= 1
        else:
          self._n_mixed -= 1
      role = i.role
      if role is prompt:
        load = i.pending_prompt_tokens
        self._prompt_sum += load
        self._n_prompt += 1
      elif role is token:
        load = i.token_pressure
        self._pressure_sum += load
        self._n_token += 1
      else:
        load = 0
        self._n_mixed += 1
      loads[i] = (role, load)
    self._stale.clear()
    if self._n_mixed or (self._n_prompt and
                         self._prompt_sum > self.prompt_limit * self._n_prompt):
      return False
    if not self._n_token:
      return True
    bound = self.kv_limit * self._n_token
    if abs(self._pressure_sum - bound) <= 1e-6 * self._n_token:
      self._pressure_sum = math.fsum(p for role, p in loads.values() if role == Role.TOKEN)
    return self._pressure_sum <= bound

  def rebalance(self, instances: Sequence[Instance]) -> list[RoleChange]:
    """Borrows and returns until the state is a fixed point; returns the changes."""
    self.quiet = self._quiet(instances)
    if self.quiet:
      return []
    changes: list[RoleChange] = []
    for lender in (Role.TOKEN, Role.PROMPT):
      key = ((lambda i: (i.token_load, i.name)) if lender == Role.TOKEN
             else (lambda i: (i.pending_prompt_tokens, i.name)))
      while self._pressure(lender, self._serving(instances, lender)) > 1.0:
        pool = [i for i in instances if i.role == lender]
        if len(pool) <= 1:
          break
        inst = min(pool, key=key)
        inst.role = Role.MIXED
        changes.append(RoleChange(inst.name, lender, Role.MIXED))
      calm = self._pressure(lender, self._serving(instances, lender)) <= 0.5
      for inst in instances:
        if inst.role != Role.MIXED or inst.home != lender:
          continue
        inst.returning = calm
        if (calm and _drained(inst) and
            self._pressure(lender, self._serving(instances, lender, skip=inst)) <= 0.5):
          inst.role, inst.returning = inst.home, False
          changes.append(RoleChange(inst.name, Role.MIXED, inst.home))
    return changes


def _drained(inst: Instance) -> bool:
  """No foreign-phase work left on a borrowed instance."""
  if inst.home == Role.TOKEN:
    return not (inst.prompt_queue or inst.prefilling or inst.held)
  return not (inst.incoming or inst.decode_queue or inst.decoding)
