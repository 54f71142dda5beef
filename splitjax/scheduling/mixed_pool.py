"""Splitwise's mixed pool: borrow instances across pools under pressure.

When the prompt pool's mean pending prompt tokens per instance passes
``borrow_prompt_tokens``, the least-loaded token instance joins the mixed
pool; when the token pool's mean ``Instance.token_pressure`` (KV in use + reserved
over capacity, or decode slots if tighter) passes ``borrow_kv_fraction``, the
least-loaded prompt instance does.
A mixed instance runs both phases (see ``steps.MixedStep``). Once the pressure
that borrowed it is gone it takes no new work of the foreign phase, and it
returns to its home pool when that work has drained. Each home pool always
keeps at least one instance of its own.
"""

from __future__ import annotations

import dataclasses
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

  def prompt_pressure(self, instances: Sequence[Instance]) -> bool:
    pool = [i for i in instances if i.role == Role.PROMPT]
    return bool(pool) and (sum(i.pending_prompt_tokens for i in pool) / len(pool)
                           > self.prompt_limit)

  def token_pressure(self, instances: Sequence[Instance]) -> bool:
    pool = [i for i in instances if i.role == Role.TOKEN]
    return bool(pool) and sum(i.token_pressure for i in pool) / len(pool) > self.kv_limit

  def rebalance(self, instances: Sequence[Instance]) -> list[RoleChange]:
    """Returns drained instances home, then borrows at most one per pool."""
    changes = []
    pressure = {Role.TOKEN: self.prompt_pressure(instances),    # keyed by the lender's home
                Role.PROMPT: self.token_pressure(instances)}
    for inst in instances:
      if inst.role != Role.MIXED:
        continue
      inst.returning = not pressure[inst.home]
      if inst.returning and _drained(inst):
        inst.role, inst.returning = inst.home, False
        changes.append(RoleChange(inst.name, Role.MIXED, inst.home))
    for home, key in ((Role.TOKEN, lambda i: (i.token_load, i.name)),
                      (Role.PROMPT, lambda i: (i.pending_prompt_tokens, i.name))):
      pool = [i for i in instances if i.role == home]
      if pressure[home] and len(pool) > 1:
        lender = min(pool, key=key)
        lender.role = Role.MIXED
        changes.append(RoleChange(lender.name, home, Role.MIXED))
    return changes


def _drained(inst: Instance) -> bool:
  """No foreign-phase work left on a borrowed instance."""
  if inst.home == Role.TOKEN:
    return not (inst.prompt_queue or inst.prefilling or inst.held)
  return not (inst.incoming or inst.decode_queue or inst.decoding)
