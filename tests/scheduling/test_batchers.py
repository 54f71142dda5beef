"""FCFS prompt batcher and continuous token batcher."""

from hypothesis import given, strategies as st

from splitjax.scheduling.batchers import ContinuousTokenBatcher, FCFSPromptBatcher
from splitjax.scheduling.records import Phase, Role
from tests.scheduling.helpers import inst, req


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30), st.integers(256, 4096))
def test_prompt_batch_respects_budget_fcfs(prompts, budget):
  p = inst("p", Role.PROMPT, capacity=10**6, slots=1)
  p.prompt_queue.extend(req(i, n, 2, token_inst="t") for i, n in enumerate(prompts))
  seen = []
  batcher = FCFSPromptBatcher(token_budget=budget, max_batch=64)
  while p.prompt_queue:
    batch = batcher.next_batch(p)
    assert batch
    assert len(batch) == 1 or sum(r.prompt_tokens for r in batch) <= budget
    assert all(r.phase == Phase.PREFILLING for r in batch)
    seen += [r.request_id for r in batch]
    for r in batch:                                   # KV held until the transfer lands
      assert p.held[r.request_id] is r
      del p.held[r.request_id]
      p.kv.free(r.request_id)
  assert seen == list(range(len(prompts)))            # FCFS, nothing lost


def test_prompt_batch_stops_at_memory_and_local_requests_take_slots():
  p = inst("p", Role.COLOCATED, capacity=320, slots=2)
  for i in range(3):
    r = req(i, 100, 50, token_inst="p")
    p.incoming[i] = r
    p.prompt_queue.append(r)
  batch = FCFSPromptBatcher(2048).next_batch(p)
  assert [r.request_id for r in batch] == [0, 1]       # third: no slot (and no memory)
  assert [r.slot for r in batch] == [0, 1]
  assert p.kv.used_tokens <= 320 and 2 in p.incoming and 0 not in p.incoming


def test_token_batcher_never_overcommits_and_is_fcfs():
  t = inst("t", Role.TOKEN, capacity=320, slots=3)
  rs = [req(0, 100, 60), req(1, 100, 60), req(2, 10, 5)]
  for r in rs:
    t.incoming[r.request_id] = r
    t.decode_queue.append(r)
  b = ContinuousTokenBatcher()
  assert [r.request_id for r in b.admit(t)] == [0, 1]   # 2 would fit but waits its turn
  assert t.kv.used_tokens <= t.kv.capacity_tokens
  assert b.admit(t) == []
  r0 = t.decoding.pop(0)
  t.give_back_slot(r0)
  assert [r.request_id for r in b.admit(t)] == [2]
  assert rs[2].slot == 0                               # the freed slot is reused
