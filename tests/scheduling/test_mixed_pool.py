"""Mixed pool: borrow under pressure, keep one instance per pool, return when drained."""

import math

from hypothesis import given, settings, strategies as st

from splitjax.scheduling.batchers import start_local_prefill
from splitjax.scheduling.mixed_pool import MixedPool, _drained
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


def test_a_lent_prompt_instance_prefilling_for_its_own_decode_is_not_returned():
  """Its request left ``incoming`` when the prefill began and decodes here
  next: returned to the prompt role now, nothing would ever decode it."""
  insts = _cluster()
  pool = MixedPool(borrow_prompt_tokens=10_000, borrow_kv_fraction=0.5)
  for t in insts[2:]:
    t.kv.allocate(1, 600)
  insts[0].prompt_queue.append(req(3, 50, 1))
  assert [c.instance for c in pool.rebalance(insts)] == ["p1"]
  p1 = insts[1]
  r = req(7, 20, 5, prompt_inst="p1", token_inst="p1")
  p1.incoming[7] = r                                    # routed here for both phases
  start_local_prefill(p1, r)
  assert not p1.incoming and not p1.decoding and not _drained(p1)
  for t in insts[2:]:
    t.kv.free(1)                                        # the token pool's pressure is gone
  assert pool.rebalance(insts) == [] and p1.role == Role.MIXED
  p1.prefilling.pop(7)                                  # prefilled: it now decodes here
  p1.decoding[7] = r
  assert pool.rebalance(insts) == [] and p1.role == Role.MIXED
  p1.decoding.pop(7)
  p1.give_back_slot(r)
  assert [(c.instance, c.new) for c in pool.rebalance(insts)] == [("p1", Role.PROMPT)]


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


def _reference(insts, limit, kv_limit):
  """The policy written plainly (fresh exact sums over the cluster on every
  question), to check the cached implementation's decisions against."""
  def load(lender, skip=None):
    own = Role.PROMPT if lender == Role.TOKEN else Role.TOKEN
    serving = [i for i in insts if i is not skip and i.role in (own, Role.MIXED)]
    if not serving:
      return 0.0
    if lender == Role.TOKEN:
      return sum(i.pending_prompt_tokens for i in serving) / len(serving) / limit
    return math.fsum(i.token_pressure for i in serving) / (len(serving) * kv_limit)
  changes = []
  for lender in (Role.TOKEN, Role.PROMPT):
    key = ((lambda i: (i.token_load, i.name)) if lender == Role.TOKEN
           else (lambda i: (i.pending_prompt_tokens, i.name)))
    while load(lender) > 1.0:
      pool = [i for i in insts if i.role == lender]
      if len(pool) <= 1:
        break
      inst = min(pool, key=key)
      inst.role = Role.MIXED
      changes.append((inst.name, Role.MIXED))
    calm = load(lender) <= 0.5
    for inst in insts:
      if inst.role != Role.MIXED or inst.home != lender:
        continue
      inst.returning = calm
      if calm and _drained(inst) and load(lender, skip=inst) <= 0.5:
        inst.role, inst.returning = inst.home, False
        changes.append((inst.name, inst.home))
  return changes


def _state(insts):
  return [(i.role, i.returning) for i in insts]


def _assert_tallies(pool, insts):
  """The cluster sums the instances feed the pool equal the sums they stand for."""
  prompt = [i for i in insts if i.role in (Role.PROMPT, Role.MIXED)]
  token = [i for i in insts if i.role in (Role.TOKEN, Role.MIXED)]
  assert pool._prompt_sum.value == sum(i.pending_prompt_tokens for i in prompt)
  assert pool._kv_sum.value == sum(i.token_load for i in token)
  assert pool._rows_sum.value == sum(len(i.decoding) + len(i.incoming) for i in token)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5),
                          st.sampled_from(["queue", "kv", "incoming", "decode", "clear"]),
                          st.integers(1, 900)), min_size=1, max_size=40),
       st.integers(100, 2000), st.floats(0.2, 1.0))
def test_cached_decisions_equal_the_plain_policy(ops, limit, kv_limit):
  """Through any sequence of load changes, the cached pool (incl. its O(1)
  "surely quiet" answers from cluster tallies) borrows and returns exactly what
  the plain policy (fresh exact sums) decides."""
  def cluster():
    return [inst(f"p{i}", Role.PROMPT) for i in range(3)] + [
        inst(f"t{i}", Role.TOKEN, capacity=1000) for i in range(3)]
  fast, plain = cluster(), cluster()
  pool = MixedPool(limit, kv_limit)
  for n, (k, op, size) in enumerate(ops):
    for insts in (fast, plain):
      i = insts[k]
      if op == "queue":
        i.prompt_queue.append(req(1000 + n, size, 1))
      elif op == "kv" and i.kv.can_allocate(size):
        i.kv.allocate(1000 + n, size)
      elif op == "incoming":
        i.incoming[1000 + n] = req(1000 + n, size, 9)
      elif op == "decode":
        i.decoding[1000 + n] = req(1000 + n, size, 9)
      elif op == "clear":
        i.prompt_queue.clear()
        i.incoming.clear()
        i.decoding.pop(next(iter(i.decoding), None), None)
        for rid in list(i.kv._held):
          i.kv.free(rid)
    got = [(c.instance, c.new) for c in pool.rebalance(fast)]
    assert got == _reference(plain, limit, kv_limit)
    assert _state(fast) == _state(plain)
    assert pool.rebalance(fast) == [] and _state(fast) == _state(plain)   # fixed point
    _assert_tallies(pool, fast)


def test_a_role_change_while_quiet_is_seen_by_the_next_call():
  """Quiet calls answer from cluster tallies; an instance changing role (here
  the whole token pool going down) must still be seen at once."""
  insts = _cluster()
  pool = MixedPool(borrow_prompt_tokens=10_000, borrow_kv_fraction=0.9)
  assert pool.rebalance(insts) == []                        # quiet
  insts[0].prompt_queue.append(req(1, 100, 5))
  assert pool.rebalance(insts) == []                        # still quiet
  for t in insts[2:]:
    t.role = Role.DOWN
  changes = pool.rebalance(insts)
  assert [(c.instance, c.new) for c in changes] == [("p1", Role.MIXED)]
