"""Mixed pool: borrow under pressure, keep one instance per pool, return when drained."""

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
