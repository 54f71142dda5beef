"""Mixed pool: borrow under pressure, keep one instance per pool, return when drained."""

from hypothesis import given, settings, strategies as st

from splitjax.scheduling.mixed_pool import MixedPool
from splitjax.scheduling.records import Role
from tests.scheduling.helpers import inst, req


def _cluster():
  return ([inst("p0", Role.PROMPT), inst("p1", Role.PROMPT)]
          + [inst(f"t{i}", Role.TOKEN, capacity=1000) for i in range(2)])


def test_borrows_a_token_instance_when_prompts_pile_up_and_returns_it():
  insts = _cluster()
  pool = MixedPool(borrow_prompt_tokens=500, borrow_kv_fraction=0.9)
  insts[2].incoming[1] = req(1, 10, 190)                    # t0 has 200 reserved
  for i in range(4):
    insts[0].prompt_queue.append(req(10 + i, 300, 1))       # mean 600 per prompt instance
  changes = pool.rebalance(insts)
  assert [(c.instance, c.old, c.new) for c in changes] == [("t1", Role.TOKEN, Role.MIXED)]
  assert pool.rebalance(insts) == []                        # t0 is the last token instance
  t1 = insts[3]
  t1.prompt_queue.append(req(20, 100, 1))                   # foreign work on the borrowed one
  insts[0].prompt_queue.clear()                             # pressure gone
  assert pool.rebalance(insts) == [] and t1.returning and not t1.takes_prompts
  t1.prompt_queue.clear()                                   # drained
  changes = pool.rebalance(insts)
  assert [(c.instance, c.new) for c in changes] == [("t1", Role.TOKEN)] and not t1.returning


def test_borrows_a_prompt_instance_when_token_memory_runs_out():
  insts = _cluster()
  pool = MixedPool(borrow_prompt_tokens=10_000, borrow_kv_fraction=0.5)
  for t in insts[2:]:
    t.kv.allocate(1, 600)
  insts[0].prompt_queue.append(req(3, 50, 1))
  changes = pool.rebalance(insts)
  assert [(c.instance, c.new) for c in changes] == [("p1", Role.MIXED)]
  assert insts[1].takes_tokens and insts[1].takes_prompts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=4, max_size=4),
       st.lists(st.integers(0, 900), min_size=3, max_size=3), st.integers(100, 2000),
       st.floats(0.2, 1.0))
def test_rebalance_is_a_fixed_point(prompt_loads, kv_loads, limit, kv_limit):
  """Calling it again without a state change changes nothing (so how often a
  driver calls it cannot matter)."""
  insts = [inst(f"p{i}", Role.PROMPT) for i in range(3)] + [
      inst(f"t{i}", Role.TOKEN, capacity=1000) for i in range(3)]
  for i, load in zip(insts[:3] + insts[3:4], prompt_loads):
    if load:
      i.prompt_queue.append(req(100 + len(i.prompt_queue), load, 1))
  for t, load in zip(insts[3:], kv_loads):
    if load:
      t.kv.allocate(1, load)
  pool = MixedPool(limit, kv_limit)
  pool.rebalance(insts)
  state = [(i.role, i.returning) for i in insts]
  assert pool.rebalance(insts) == []
  assert [(i.role, i.returning) for i in insts] == state
  assert any(i.role == Role.PROMPT for i in insts) and any(i.role == Role.TOKEN for i in insts)
