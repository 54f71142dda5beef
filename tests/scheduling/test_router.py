"""JSQ routers: least-loaded choice, capacity checks, clear refusals."""

import pytest
from hypothesis import given, strategies as st

from splitjax.scheduling.records import Role
from splitjax.scheduling.router import ColocatedJSQRouter, JSQRouter, NoInstanceError
from tests.scheduling.helpers import inst, req


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=6),
       st.lists(st.integers(0, 3000), min_size=1, max_size=6))
def test_jsq_picks_least_loaded(prompt_loads, token_loads):
  prompts = [inst(f"p{i}", Role.PROMPT) for i in range(len(prompt_loads))]
  for p, load in zip(prompts, prompt_loads):
    if load:
      p.prompt_queue.append(req(-1, load, 1))
  tokens = [inst(f"t{i}", Role.TOKEN, capacity=10_000) for i in range(len(token_loads))]
  for t, load in zip(tokens, token_loads):
    if load:
      t.kv.allocate(-1, load)
  p, t = JSQRouter().route(req(0, 10, 10), prompts + tokens)
  assert p.pending_prompt_tokens == min(i.pending_prompt_tokens for i in prompts)
  assert t.token_load == min(i.token_load for i in tokens)   # same capacity: same order
  assert t.token_pressure == min(i.token_pressure for i in tokens)
  assert p.role == Role.PROMPT and t.role == Role.TOKEN


def test_router_counts_reserved_and_skips_too_small_instances():
  small, big = inst("a", Role.TOKEN, capacity=64), inst("b", Role.TOKEN, capacity=4096)
  big.incoming[9] = req(9, 1000, 1000)                 # reserved, not yet admitted
  assert big.token_load == 2000
  _, t = JSQRouter().route(req(0, 100, 10), [inst("p", Role.PROMPT), small, big])
  assert t is big                                      # small can never hold 110 tokens
  with pytest.raises(NoInstanceError, match="largest a token instance can hold is 4096"):
    JSQRouter().route(req(1, 5000, 10), [inst("p", Role.PROMPT), small, big])


def test_router_respects_slot_length_and_mixed_pool():
  t = inst("t", Role.TOKEN, capacity=10_000, max_tokens=512)
  with pytest.raises(NoInstanceError):
    JSQRouter().route(req(0, 500, 20), [inst("p", Role.PROMPT), t])
  m = inst("m", Role.TOKEN)
  m.role = Role.MIXED                                   # borrowed: takes both phases
  p = inst("p", Role.PROMPT)
  p.prompt_queue.append(req(5, 100, 1))
  chosen_p, _ = JSQRouter().route(req(1, 10, 10), [p, m])
  assert chosen_p is m
  m.returning = True                                    # going home: no new prompts
  chosen_p, _ = JSQRouter().route(req(2, 10, 10), [p, m])
  assert chosen_p is p


def test_token_router_counts_slots_when_they_bind_first():
  few_long, many_short = inst("a", Role.TOKEN, slots=4), inst("b", Role.TOKEN, slots=4)
  few_long.kv.allocate(1, 2000)                       # half the KV, one slot of four
  for i in range(4):                                  # little KV, every slot taken
    many_short.incoming[i] = req(i, 10, 10)
  assert many_short.token_load < few_long.token_load
  _, t = JSQRouter().route(req(9, 10, 10), [inst("p", Role.PROMPT), few_long, many_short])
  assert t is few_long


def test_colocated_router_uses_one_instance_least_outstanding():
  a, b = inst("a", Role.COLOCATED), inst("b", Role.COLOCATED)
  a.prompt_queue.append(req(7, 300, 1))
  a.incoming[7] = a.prompt_queue[0]
  p, t = ColocatedJSQRouter().route(req(0, 10, 10), [a, b])
  assert p is t is b
  for i in range(2):                                  # b: two short requests decoding
    b.decoding[10 + i] = req(10 + i, 5, 5)
  p, _ = ColocatedJSQRouter().route(req(1, 10, 10), [a, b])
  assert p is a
