"""The driver loop with every policy on a virtual clock and the fake executor:
conservation of requests, memory never over-committed, hand-checkable times and
tokens, rejection at admission, preemption and the mixed pool."""

import pytest
from hypothesis import example, given, settings, strategies as st

from splitjax.metrics import RequestStatus
from splitjax.runtime.clock import VirtualClock
from splitjax.runtime.fake_executor import FakeExecutor, FakeTimes, fake_token
from splitjax.runtime.loop import replay
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.serve_config import ClusterPolicy, SchedulerConfig
from splitjax.workload import RequestSpec
from tests.scheduling.helpers import assert_counters

POLICIES = [(ClusterPolicy.SPLIT, False), (ClusterPolicy.SPLIT, True),
            (ClusterPolicy.COLOCATED, False), (ClusterPolicy.COLOCATED_CHUNKED, False)]


class CheckingExecutor(FakeExecutor):
  """Checks cluster-wide invariants every time the loop launches work."""

  def __init__(self, coord, **kw):
    super().__init__(**kw)
    self.coord = coord

  def launch(self, work, now):
    for i in self.coord.instances:
      assert i.kv.used_blocks <= i.kv.total_blocks, f"{i.name} over-committed"
      assert len(i.decoding) + len(i.free_slots) <= i.decode_slots
      slots = [r.slot for r in list(i.decoding.values()) + list(i.prefilling.values())
               if r.token_instance == i.name and r.slot is not None]
      assert len(slots) == len(set(slots)), f"{i.name} slot given twice"
      assert_counters(i)
    super().launch(work, now)


def _run(specs, policy, mixed, *, n_prompt=2, n_token=2, n_coloc=4, slots=4, capacity=2048,
         max_tokens=1024, times=FakeTimes(), **sched):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed, **sched)
  insts = make_instances(home_roles(cfg, n_prompt, n_token, n_coloc), slots, capacity,
                         max_tokens)
  coord = Coordinator(insts, make_policies(cfg), max_prompt_tokens=1024)
  ex = CheckingExecutor(coord, times=times)
  return replay(coord, ex, specs, VirtualClock(), sample_every_s=0.05), coord, ex


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 900), st.integers(1, 40)),
                min_size=1, max_size=30),
       st.sampled_from(POLICIES))
# Request 2 prefills on the lent prompt1 to decode there; prompt1 was returned
# mid-prefill, and nothing decoded it (fixed in mixed_pool._drained).
@example([(0.0, 690, 31), (0.25, 639, 40), (0.265625, 1, 2), (0.125, 307, 17),
          (0.1875, 83, 9), (0.0625, 714, 22), (0.09375, 705, 16)],
         (ClusterPolicy.SPLIT, True))
def test_every_request_ends_with_hand_checkable_tokens(reqs, policy):
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  result, coord, _ = _run(specs, *policy, borrow_prompt_tokens=300, chunk_token_budget=128)
  assert coord.idle
  s = result.summary
  assert s.completed + s.failed + s.rejected == s.submitted == len(specs)
  for r in result.records:
    if r.status == RequestStatus.COMPLETED:
      assert r.token_ids == [fake_token(r.request_id, i) for i in range(r.output_tokens)]
      assert r.arrival_s <= r.scheduled_s <= r.token_times_s[0]
      assert r.token_times_s == sorted(r.token_times_s)
    else:
      assert r.status == RequestStatus.REJECTED and r.reason   # only the too-long ones
      assert r.prompt_tokens + r.output_tokens > 1024 or r.prompt_tokens > 1024


def test_times_are_hand_checkable_for_one_split_request():
  t = FakeTimes(prefill_base_s=0.01, prefill_per_token_s=0.001, decode_base_s=0.005,
                decode_per_seq_s=0.0, transfer_s=0.002)
  result, _, _ = _run([RequestSpec(0, 1.0, 100, 3)], ClusterPolicy.SPLIT, False, times=t)
  r = result.records[0]
  # prefill 10 + 100 ms -> first token at 1.11; KV lands at 1.112; two decode steps of 5 ms.
  assert r.token_times_s == pytest.approx([1.11, 1.117, 1.122])
  assert r.ttft_s == pytest.approx(0.11) and r.tbt_s == pytest.approx(0.006)
  assert r.transfer_s == pytest.approx(0.002) and r.transfer_bytes == 100 * 1024
  assert (r.prompt_instance, r.token_instance) == ("prompt0", "token0")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_that_never_fits_is_rejected_and_the_run_goes_on(policy):
  specs = [RequestSpec(0, 0.0, 100, 10), RequestSpec(1, 0.0, 1000, 100),   # > 1024 tokens
           RequestSpec(2, 0.0, 2000, 1), RequestSpec(3, 0.01, 50, 5)]
  result, _, _ = _run(specs, *policy)
  st_ = {r.request_id: (r.status, r.reason) for r in result.records}
  assert st_[0][0] == st_[3][0] == RequestStatus.COMPLETED
  assert st_[1][0] == RequestStatus.REJECTED and "1100 tokens" in st_[1][1]
  assert st_[2][0] == RequestStatus.REJECTED and "longest prompt" in st_[2][1]


def test_mixed_pool_borrows_under_a_burst_preempts_and_gives_back():
  burst = [RequestSpec(i, 0.02 * i, 800, 30) for i in range(30)]
  result, coord, ex = _run(burst, ClusterPolicy.SPLIT, True, n_prompt=1, n_token=3,
                           borrow_prompt_tokens=1000, max_preemptions=2)
  d = result.to_dict()
  assert d["mixed_pool"]["borrowings"] >= 1
  assert d["mixed_pool"]["returns"] == d["mixed_pool"]["borrowings"]   # all went home
  assert all(i.role == i.home for i in coord.instances)
  assert result.summary.completed == 30
  preempted = [r for r in result.records if r.preemptions]
  assert preempted and all(r.status == RequestStatus.COMPLETED for r in preempted)
  # No token gap longer than 2 prompt batches (~0.09 s each here) plus the decode step.
  assert max(g for r in preempted for g in r.itl_s) < 3 * 0.1
  assert any(w.instance.home.value == "token" and w.prefill for w in ex.launched)
  # Same tokens as without the mixed pool: scheduling changes timing, never tokens.
  plain, _, _ = _run(burst, ClusterPolicy.SPLIT, False, n_prompt=1, n_token=3)
  assert [r.token_ids for r in plain.records] == [r.token_ids for r in result.records]


def test_chunked_decodes_never_stall_behind_a_long_prompt():
  specs = [RequestSpec(0, 0.0, 20, 40), RequestSpec(1, 0.05, 900, 2)]
  chunked, _, _ = _run(specs, ClusterPolicy.COLOCATED_CHUNKED, False, n_coloc=1,
                       chunk_token_budget=128)
  coloc, _, _ = _run(specs, ClusterPolicy.COLOCATED, False, n_coloc=1)
  gap = lambda res: max(res.records[0].itl_s)
  # Co-located: request 0 waits out the whole 900-token prefill (~0.1 s); chunked
  # interleaves it 127 tokens at a time.
  assert gap(coloc) > 0.09 and gap(chunked) < 0.03
