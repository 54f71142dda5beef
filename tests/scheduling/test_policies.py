"""Router and batchers, alone and driven together by a tiny fake loop."""

import collections

import pytest
from hypothesis import given, settings, strategies as st

from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.policies import ContinuousTokenBatcher, FCFSPromptBatcher, JSQRouter
from splitjax.scheduling.records import Instance, Request, Role


def _inst(name, role, capacity=4096, slots=8):
  return Instance(name, role, KVMemory(capacity), slots)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=6),
       st.lists(st.integers(0, 3000), min_size=1, max_size=6))
def test_jsq_picks_least_loaded(prompt_loads, token_loads):
  prompts = [_inst(f"p{i}", Role.PROMPT) for i in range(len(prompt_loads))]
  for inst, load in zip(prompts, prompt_loads):
    if load:
      inst.prompt_queue.append(Request(-1, 0.0, load, 1))
  tokens = [_inst(f"t{i}", Role.TOKEN, capacity=10_000) for i in range(len(token_loads))]
  for inst, load in zip(tokens, token_loads):
    if load:
      inst.kv.allocate(-1, load)
  p, t = JSQRouter().route(Request(0, 0.0, 10, 10), prompts, tokens)
  assert p.pending_prompt_tokens == min(i.pending_prompt_tokens for i in prompts)
  assert t.token_load == min(i.token_load for i in tokens)


def test_router_counts_reserved_and_skips_too_small_instances():
  small, big = _inst("a", Role.TOKEN, capacity=64), _inst("b", Role.TOKEN, capacity=4096)
  big.decode_queue.append(Request(9, 0.0, 1000, 1000))        # reserved, not yet admitted
  _, t = JSQRouter().route(Request(0, 0.0, 100, 10), [_inst("p", Role.PROMPT)], [small, big])
  assert t is big                                               # small can never hold 110 tokens
  with pytest.raises(ValueError, match="fits no token instance"):
    JSQRouter().route(Request(1, 0.0, 5000, 10), [_inst("p", Role.PROMPT)], [small, big])


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30), st.integers(256, 4096))
def test_prompt_batch_respects_budget_fcfs(prompts, budget):
  inst = _inst("p", Role.PROMPT, capacity=10**6, slots=1)
  inst.prompt_queue.extend(Request(i, 0.0, n, 1) for i, n in enumerate(prompts))
  seen = []
  batcher = FCFSPromptBatcher(token_budget=budget)
  while inst.prompt_queue:
    batch = batcher.next_batch(inst)
    assert batch
    assert len(batch) == 1 or sum(r.prompt_tokens for r in batch) <= budget
    seen += [r.request_id for r in batch]
    for r in batch:
      inst.kv.free(r.request_id)
  assert seen == list(range(len(prompts)))                      # FCFS, nothing lost


def test_token_batcher_never_overcommits_and_is_fcfs():
  inst = _inst("t", Role.TOKEN, capacity=320, slots=3)
  inst.decode_queue.extend([Request(0, 0, 100, 60), Request(1, 0, 100, 60), Request(2, 0, 10, 5)])
  b = ContinuousTokenBatcher()
  assert [r.request_id for r in b.admit(inst)] == [0, 1]       # 2 would fit but waits its turn
  b.finish(inst, inst.decoding[0])
  assert [r.request_id for r in b.admit(inst)] == [2]
  assert inst.kv.used_tokens <= inst.kv.capacity_tokens


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 700), st.integers(1, 40)), min_size=1, max_size=40),
       st.integers(1, 3), st.integers(1, 3))
def test_fake_split_cluster_conserves_requests(reqs, n_prompt, n_token):
  """Arrive -> route -> prompt batch -> transfer -> admit -> decode -> finish,
  one step per tick: every request finishes and memory is never over-committed."""
  prompts = [_inst(f"p{i}", Role.PROMPT, capacity=2048) for i in range(n_prompt)]
  tokens = [_inst(f"t{i}", Role.TOKEN, capacity=2048, slots=4) for i in range(n_token)]
  router, pb, tb = JSQRouter(), FCFSPromptBatcher(1024), ContinuousTokenBatcher()
  pending = collections.deque(Request(i, float(i), p, o) for i, (p, o) in enumerate(reqs))
  target: dict[int, Instance] = {}
  finished = []
  for _ in range(10_000):
    if pending:
      r = pending.popleft()
      p, t = router.route(r, prompts, tokens)
      p.prompt_queue.append(r)
      target[r.request_id] = t
    for p in prompts:
      for r in pb.next_batch(p):          # prefill: first token, then KV leaves
        r.generated = 1
        p.kv.free(r.request_id)
        target[r.request_id].decode_queue.append(r)
    for t in tokens:
      tb.admit(t)
      for r in list(t.decoding.values()):
        if r.done:
          tb.finish(t, r)
          finished.append(r.request_id)
        else:
          r.generated += 1
      assert t.kv.used_blocks <= t.kv.total_blocks
    if not pending and all(i.idle for i in prompts + tokens):
      break
  assert sorted(finished) == list(range(len(reqs)))
