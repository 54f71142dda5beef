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

Faults: an instance that is down (``Role.DOWN``) serves nothing and is never
borrowed nor returned. If a phase loses every instance of its own pool, one
instance of the other pool is borrowed at once whatever the pressure (even
that pool's last), and borrowed instances serving that phase never go back;
without a down instance none of this applies.

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
from splitjax.scheduling.tally import Tally

# Members as module constants: reading a global is cheaper than an Enum class attribute.
_PROMPT, _TOKEN, _MIXED, _DOWN = Role.PROMPT, Role.TOKEN, Role.MIXED, Role.DOWN
# Each lending pool, in the order rebalance asks them, with what picks the instance
# it lends (the least loaded for the phase it is lent to, ties by name).
_LENDERS = ((_TOKEN, lambda i: (i.token_load, i.name)),
            (_PROMPT, lambda i: (i.pending_prompt_tokens, i.name)))


@dataclasses.dataclass(frozen=True)
class RoleChange:
  instance: str
  old: Role
  new: Role


class MixedPool:
  """Decides borrowings and returns; call :meth:`rebalance` between iterations.

  Keeps, per instance, its role and loads (pending prompt tokens for prompt
  and mixed instances, token pressure for token and mixed ones), refreshed
  only for instances that reported a change (``Instance.watchers``), and
  running totals per role, so a call costs O(changes), not O(cluster), also
  while instances are borrowed. Decisions compare means against limits;
  prompt tokens are integers (exact) and token pressures are summed exactly
  (``math.fsum`` of the cached values) whenever the running float sum is
  within rounding of a threshold, so every decision is a pure function of the
  cluster state.

  The common case costs O(1) per call: the instances also add every change of
  their loads to cluster-wide tallies (``Instance.feed``: pending prompt tokens
  of the prompt pool; KV tokens and requests of the token pool). While the
  pool is quiet, no instance that changed has a new role, and the tallies
  leave clear room under both limits (token pressure bounded from above by
  the KV and request fractions summed, each over the largest per-instance
  factor), the answer is "still quiet" without re-reading any instance; the
  per-instance loads are re-read, all at once, the next time the room is not
  clear.
  """

  def __init__(self, borrow_prompt_tokens: int, borrow_kv_fraction: float):
    if borrow_prompt_tokens <= 0 or not 0.0 < borrow_kv_fraction <= 1.0:
      raise ValueError("borrow_prompt_tokens must be > 0 and borrow_kv_fraction in (0, 1]")
    self.prompt_limit, self.kv_limit = borrow_prompt_tokens, borrow_kv_fraction
    self._bound: Sequence[Instance] | None = None
    self._reset()

  def _reset(self) -> None:
    self._index: dict[Instance, int] = {}
    self._loads: dict[Instance, tuple] = {}        # instance -> (role, pending, pressure)
    self._stale: set[Instance] = set()
    # Sums per role slot (enum hashing is slow): 0 prompt, 1 token, 2 mixed,
    # 3 colocated, 4 down.
    self._pending, self._pressure, self._count = [0] * 5, [0.0] * 5, [0] * 5
    self._mixed: set[Instance] = set()
    # Cluster sums the instances keep up to date (Instance.feed): pending prompt
    # tokens of prompt + mixed instances, KV tokens and requests of token +
    # mixed ones; the rest feed ``_ignored`` (re-pointed when a role changes).
    self._prompt_sum, self._kv_sum, self._rows_sum = Tally(), Tally(), Tally()
    self._ignored = Tally()
    self._inv_cap = self._inv_slots = 0.0  # the largest 1 / KV tokens, 1 / decode slots
    self._fresh = True               # ``_loads`` holds every instance's load (see rebalance)
    self._new_roles: set[Instance] = set()   # role changed since the loads were last read
    self._settled = False            # the last call changed nothing, and nothing changed since
    # The last rebalance found no mixed pool and no pressure (changed nothing,
    # not even ``returning`` flags).
    self.quiet = True
    # The last rebalance changed a ``returning`` flag (who takes new work).
    self.flags_changed = False

  # ---------------------------------------------------------------- cache
  def _bind(self, instances: Sequence[Instance]) -> None:
    if self._bound is instances:
      return
    for i in self._bound or ():
      i.watchers.remove(self._stale)
      i.role_watchers.remove(self._new_roles)
    self._reset()
    self._bound, self._stale = instances, set(instances)
    self._index = {i: n for n, i in enumerate(instances)}
    self.quiet = False
    for i in instances:
      i.watchers.append(self._stale)
      i.role_watchers.append(self._new_roles)
      self._feed(i, i.role)
    self._inv_cap = max((1.0 / i.kv.total_tokens for i in instances), default=0.0)
    self._inv_slots = max((1.0 / max(i.decode_slots, 1) for i in instances), default=0.0)

  def _feed(self, i: Instance, role: Role) -> None:
    """Points ``i``'s tallies at the cluster sums its ``role`` counts in."""
    prompt = role is _PROMPT or role is _MIXED
    token = role is _TOKEN or role is _MIXED
    ignored = self._ignored
    i.feed(self._prompt_sum if prompt else ignored, self._kv_sum if token else ignored,
           self._rows_sum if token else ignored)

  def _surely_quiet(self) -> bool:
    """Quiet whatever the changed instances' loads are now (O(1)): no role
    changed since the loads were last read, no mixed or down instance, and the
    tallies leave clear room under both limits (see the class docstring)."""
    count = self._count
    if self._new_roles or count[2] or count[4]:
      return False
    if count[0] and self._prompt_sum.value > count[0] * self.prompt_limit:
      return False                       # (integers: as exact as _quiet)
    if count[1]:                         # sum of max(kv, rows) <= sum kv + sum rows
      upper = self._kv_sum.value * self._inv_cap + self._rows_sum.value * self._inv_slots
      if upper > count[1] * self.kv_limit * (1.0 - 1e-6):
        return False
    return True

  def _refresh(self) -> bool:
    """Re-reads the loads of instances that changed since the last call;
    whether any role or load differs from before."""
    loads, moved = self._loads, False
    for i in self._stale:
      role, old = i.role, loads.get(i)
      # The common cases first: a prompt / token instance that kept its role
      # (only its own load can have moved; the same arithmetic as below).
      if role is _PROMPT and old is not None and old[0] == 0:
        p = i.prompt_queue.tokens + i.prefilling.tokens
        if p != old[1]:
          pending = self._pending
          pending[0] -= old[1]
          pending[0] += p
          loads[i], moved = (0, p, 0.0), True
        continue
      if role is _TOKEN and old is not None and old[0] == 1:
        q = i.token_pressure
        if q != old[2]:
          pressure = self._pressure
          pressure[1] -= old[2]
          pressure[1] += q
          loads[i], moved = (1, 0, q), True
        continue
      moved = self._reload(i, role, old) or moved
    self._stale.clear()
    self._new_roles.clear()          # (a new role is also a change: re-read above)
    return moved

  def _reload(self, i: Instance, role: Role, old: tuple | None) -> bool:
    """Re-reads ``i``'s load under ``role`` (its cached one: ``old``); whether it moved."""
    if role is _PROMPT:                    # role slot k, pending p, token pressure q
      k, p, q = 0, i.pending_prompt_tokens, 0.0
    elif role is _TOKEN:
      k, p, q = 1, 0, i.token_pressure
    elif role is _MIXED:
      k, p, q = 2, i.pending_prompt_tokens, i.token_pressure
    else:
      k, p, q = (4 if role is _DOWN else 3), 0, 0.0
    new = (k, p, q)
    if new == old:
      return False                         # unchanged: the sums stay as they are
    pending, pressure, count = self._pending, self._pressure, self._count
    self._loads[i] = new
    if old is None or old[0] != k:         # a new role (slot): counted and fed as such
      self._feed(i, role)
      if old is not None:
        count[old[0]] -= 1
      count[k] += 1
      if k == 2:
        self._mixed.add(i)
      else:
        self._mixed.discard(i)
    if old is not None:
      pending[old[0]] -= old[1]
      pressure[old[0]] -= old[2]
    pending[k] += p
    pressure[k] += q
    return True

  def _load(self, lender: Role, skip: Instance | None = None) -> float:
    """Pressure (mean load / limit) on the phase ``lender``'s instances are lent
    to, over that phase's own pool plus the mixed pool (minus ``skip``)."""
    own = 0 if lender is _TOKEN else 1          # the phase's own pool; 2 = mixed
    n = self._count[own] + self._count[2] - (skip is not None)
    if n <= 0:
      return 0.0
    if own == 0:
      total = self._pending[0] + self._pending[2]
      if skip is not None:
        total -= self._loads[skip][1]
      return total / n / self.prompt_limit
    total = self._pressure[1] + self._pressure[2]
    if skip is not None:
      total -= self._loads[skip][2]
    bound = n * self.kv_limit
    if abs(total - bound) <= 1e-9 * bound or abs(total - 0.5 * bound) <= 1e-9 * bound:
      total = math.fsum(q for i, (k, _, q) in self._loads.items()
                        if (k == 1 or k == 2) and i is not skip)
    return total / bound

  def _lost(self, lender: Role) -> bool:
    """The phase ``lender`` lends to has lost its whole own pool to faults."""
    return bool(self._count[4]) and not self._count[0 if lender is _TOKEN else 1]

  def _wants(self, lender: Role) -> bool:
    """Whether to borrow (another) instance of ``lender``'s pool: pressure on
    the other phase (keeping one instance home), or that phase has nobody."""
    k = 0 if lender is _PROMPT else 1                  # the lender's own pool
    if self._count[k] > 1 and self._load(lender) > 1.0:
      return True
    return self._count[k] > 0 and self._lost(lender) and not self._count[2]

  def _quiet(self) -> bool:
    """No mixed pool and no pressure: nothing to do (the common case). Bound,
    loads refreshed; a function of the loads only."""
    count = self._count
    if count[2] or (count[4] and (self._wants(_TOKEN) or self._wants(_PROMPT))):
      return False
    if count[0] and self._pending[0] / count[0] / self.prompt_limit > 1.0:
      return False                       # the same arithmetic as _load(TOKEN)
    bound = count[1] * self.kv_limit
    if bound and abs(self._pressure[1] - bound) > 1e-9 * bound:
      return self._pressure[1] <= bound  # clearly on one side (else exact below)
    return self._load(_PROMPT) <= 1.0

  # ---------------------------------------------------------------- policy
  def rebalance(self, instances: Sequence[Instance]) -> list[RoleChange]:
    """Borrows and returns until the state is a fixed point; returns the changes."""
    self.flags_changed = False
    if self._bound is not instances:
      self._bind(instances)
    stale = self._stale
    if not stale:                        # nothing changed since the last call
      if self._settled:
        return []                        # ... which reached a fixed point
      if self.quiet:
        self._settled = True
        return []
    elif self.quiet and self._surely_quiet():
      stale.clear()                      # their loads are re-read when next needed
      self._fresh = False
      self._settled = True
      return []
    else:
      if not self._fresh:                # loads skipped while surely quiet: re-read all
        stale.update(self._bound)
        self._fresh = True
      if self._refresh() or not self.quiet:  # (quiet is a function of the loads)
        self.quiet = self._settled = self._quiet()
        if self.quiet:
          return []
      else:                              # loads as they were when last found quiet
        self._settled = True
        return []
    changes: list[RoleChange] = []
    for lender, key in _LENDERS:
      while self._wants(lender):
        inst = min((i for i in instances if i.role is lender), key=key)
        inst.role = _MIXED
        self._refresh()
        changes.append(RoleChange(inst.name, lender, _MIXED))
      if not self._mixed:                # (calm only sets borrowed instances' flags)
        continue
      calm = self._load(lender) <= 0.5 and not self._lost(lender)
      for inst in sorted(self._mixed, key=self._index.__getitem__):
        if inst.home is not lender:
          continue
        if inst.returning != calm:
          inst.returning, self.flags_changed = calm, True
        if calm and _drained(inst) and self._load(lender, skip=inst) <= 0.5:
          inst.role, inst.returning = inst.home, False
          self._refresh()
          changes.append(RoleChange(inst.name, Role.MIXED, inst.home))
    self._settled = not changes and not self.flags_changed
    return changes


def _drained(inst: Instance) -> bool:
  """No foreign-phase work left on a borrowed instance. A prompt instance lent
  to the token phase is not drained while it prefills a request it decodes
  itself (``start_local_prefill`` took it out of ``incoming``): returned then,
  that request would wait for a decode its prompt role never runs."""
  if inst.home == Role.TOKEN:
    return not (inst.prompt_queue or inst.prefilling or inst.held)
  if inst.incoming or inst.decode_queue or inst.decoding:
    return False
  name = inst.name
  return not any(r.token_instance == name for r in inst.prefilling.values())
