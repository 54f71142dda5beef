"""The discrete-event simulator: leap mode equals stepping mode request by request,
requests are conserved, KV memory is never over-committed, runs are deterministic."""

import dataclasses
import gc

import pytest
from hypothesis import given, settings, strategies as st

from splitjax.metrics import RequestStatus
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.serve_config import ClusterPolicy, SchedulerConfig
from splitjax.sim.driver import Simulator
from splitjax.sim.perf_model import Phase
from splitjax.workload import RequestSpec
from tests.scheduling.helpers import assert_counters

POLICIES = [(ClusterPolicy.SPLIT, False), (ClusterPolicy.SPLIT, True),
            (ClusterPolicy.COLOCATED, False), (ClusterPolicy.COLOCATED_CHUNKED, False)]


@dataclasses.dataclass(frozen=True)
class LinearModel:
  """Hand-checkable costs: decode grows with batch and context."""
  def prefill_time(self, lens):
    return 0.01 + 1e-4 * sum(lens) if lens else 0.0

  def decode_time(self, ctx):
    return self.decode_step_time(len(ctx), sum(ctx))

  def decode_step_time(self, batch, context_sum):
    return 0.005 + 2e-4 * batch + 1e-6 * context_sum if batch else 0.0

  def decode_step_times(self, batch, context_sums):
    return 0.005 + 2e-4 * batch + 1e-6 * context_sums

  def mixed_time(self, ctx, chunks):
    return self.decode_time(ctx) + 1e-4 * sum(n for _, n in chunks) + 1e-6 * sum(
        s for s, _ in chunks)

  def power_w(self, phase: Phase):
    return 100.0


def _sim(specs, policy, mixed, leap, sim_out=None, keep_token_times=True, **sched):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed, **sched)
  insts = make_instances(home_roles(cfg, 2, 2, 4), 4, 2048, 1024)
  coord = Coordinator(insts, make_policies(cfg), max_prompt_tokens=1024)
  transfer = lambda r, src, dst, prefill_s: (0.001 + 1e-6 * r.prompt_tokens, r.prompt_tokens * 8)
  sim = Simulator(coord, {i.name: LinearModel() for i in insts}, transfer, leap=leap,
                  check_memory=True, sample_every_s=0.05, keep_token_times=keep_token_times)
  checked = sim._handle

  def handle_and_check(kind, obj):          # counters stay exact through every event
    out = checked(kind, obj)
    for i in coord.instances:
      assert_counters(i)
    return out
  sim._handle = handle_and_check
  result = sim.run(specs)
  if sim_out is not None:
    sim_out.append(sim)
  return result, coord


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 900), st.integers(1, 60)),
                min_size=1, max_size=30),
       st.sampled_from(POLICIES))
def test_leap_equals_stepping_request_by_request(reqs, policy):
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  kw = dict(borrow_prompt_tokens=200, chunk_token_budget=128, max_preemptions=2)
  stepped, _ = _sim(specs, *policy, leap=False, **kw)
  leapt, coord = _sim(specs, *policy, leap=True, **kw)
  assert coord.idle
  for a, b in zip(stepped.records, leapt.records):
    assert (a.status, a.reason, a.prompt_instance, a.token_instance, a.preemptions) == (
        b.status, b.reason, b.prompt_instance, b.token_instance, b.preemptions)
    assert a.token_times_s == b.token_times_s and a.scheduled_s == b.scheduled_s
    assert a.transfer_s == b.transfer_s and a.transfer_bytes == b.transfer_bytes
  s = leapt.summary
  assert s.completed + s.failed + s.rejected == s.submitted == len(specs)
  # Without faults nothing fails: an accepted request is never left stuck (what
  # lets a probe stop once its checks are certain to hold, sim.window).
  assert s.failed == 0 and stepped.summary.failed == 0
  assert all(len(r.token_times_s) == r.output_tokens for r in leapt.records
             if r.status == RequestStatus.COMPLETED)
  assert stepped.role_changes == leapt.role_changes


def test_a_mixed_instance_with_prompts_queued_does_not_leap():
  """A borrowed instance decoding because a row is overdue (prompts queued)
  runs prompts again after one step: stepping and leaping agree (a case found
  by the test above)."""
  reqs = [(0.125, 57, 1), (0.125, 369, 1), (0.15625, 57, 1), (0.140625, 31, 1),
          (0.15625, 56, 1), (0.171875, 1, 1), (0.0625, 258, 11)]
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  kw = dict(borrow_prompt_tokens=200, chunk_token_budget=128, max_preemptions=2)
  stepped, _ = _sim(specs, ClusterPolicy.SPLIT, True, leap=False, **kw)
  leapt, _ = _sim(specs, ClusterPolicy.SPLIT, True, leap=True, **kw)
  assert stepped.role_changes == leapt.role_changes and stepped.role_changes
  assert [r.token_times_s for r in stepped.records] == [r.token_times_s for r in leapt.records]


def test_runs_are_deterministic_and_decode_depends_on_context():
  specs = [RequestSpec(i, 0.01 * i, 50 + 37 * i % 800, 5 + i % 30) for i in range(60)]
  a, _ = _sim(specs, ClusterPolicy.SPLIT, True, True)
  b, _ = _sim(specs, ClusterPolicy.SPLIT, True, True)
  assert a.to_dict() == b.to_dict()
  long_ctx, _ = _sim([RequestSpec(0, 0.0, 900, 50)], ClusterPolicy.SPLIT, False, True)
  short_ctx, _ = _sim([RequestSpec(0, 0.0, 10, 50)], ClusterPolicy.SPLIT, False, True)
  assert long_ctx.records[0].tbt_s > short_ctx.records[0].tbt_s


@pytest.mark.parametrize("policy, mixed", POLICIES)
@pytest.mark.parametrize("leap", [False, True])
def test_a_run_leaves_no_reference_cycles_and_restores_the_collector(policy, mixed, leap):
  # Simulator.run pauses the cyclic collector over its loop: that is only
  # harmless if the loop leaves no garbage cycles behind.
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed)
  insts = make_instances(home_roles(cfg, 2, 2, 4), 4, 2048, 1024)
  coord = Coordinator(insts, make_policies(cfg), max_prompt_tokens=1024)
  transfer = lambda r, src, dst, prefill_s: (0.001, r.prompt_tokens * 8)
  sim = Simulator(coord, {i.name: LinearModel() for i in insts}, transfer, leap=leap,
                  keep_token_times=False)
  specs = [RequestSpec(i, 0.002 * i, 50 + 37 * i % 800, 5 + i % 30) for i in range(120)]
  while gc.collect():           # earlier tests' garbage (freeing some frees more)
    pass
  result = sim.run(specs)
  assert gc.isenabled()
  assert gc.collect() == 0
  assert all(r.status is RequestStatus.COMPLETED for r in result.records)
  gc.disable()
  try:
    Simulator(coord, sim.perf, transfer).run([])
    assert not gc.isenabled()                   # left as it was
  finally:
    gc.enable()


def test_leap_mode_skips_iterations():
  specs = [RequestSpec(i, 0.001 * i, 100, 200) for i in range(8)]
  sims = []
  a, _ = _sim(specs, ClusterPolicy.SPLIT, False, False, sims)
  b, _ = _sim(specs, ClusterPolicy.SPLIT, False, True, sims)
  assert [r.token_times_s for r in a.records] == [r.token_times_s for r in b.records]
  assert sims[1].events * 10 < sims[0].events     # ~400 decode steps become a handful


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 900), st.integers(1, 60)),
                min_size=1, max_size=25),
       st.sampled_from(POLICIES), st.booleans())
def test_records_without_token_times_give_the_same_results(reqs, policy, leap):
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  kept, _ = _sim(specs, *policy, leap=leap, chunk_token_budget=128)
  lean, _ = _sim(specs, *policy, leap=leap, chunk_token_budget=128, keep_token_times=False)
  assert kept.to_dict() == lean.to_dict()
  for a, b in zip(kept.records, lean.records):
    assert b.token_times_s is None
    assert (a.ttft_s, a.tbt_s, a.e2e_s, a.tokens, a.max_itl_s) == (
        b.ttft_s, b.tbt_s, b.e2e_s, b.tokens, b.max_itl_s)
    itl = a.itl_s
    assert a.max_itl_s == (max(itl) if itl else None)


def test_busy_time_per_pool_is_conserved():
  specs = [RequestSpec(i, 0.02 * i, 100 + 50 * i, 20) for i in range(12)]
  sims = []
  result, coord = _sim(specs, ClusterPolicy.SPLIT, False, True, sims)
  busy_s, run_s = sims[0].busy.busy_s(), result.summary.wall_s
  util = result.to_dict()["instances"]
  assert set(util) == {"prompt", "token"}
  for pool, u in util.items():
    names = [i.name for i in coord.instances if i.home.value == pool]
    busy = sum(s for n in names for s in busy_s[n].values())
    assert u["machines"] == 2 and u["busy_fraction"] == pytest.approx(busy / (2 * run_s))
    spans = [min(run_s, (k + 1) * u["window_s"]) - k * u["window_s"]
             for k in range(len(u["over_time"]))]
    assert sum(f * 2 * s for f, s in zip(u["over_time"], spans)) == pytest.approx(busy)
    assert all(0.0 <= f <= 1.0 + 1e-9 for f in u["over_time"])
  assert set(util["prompt"]["busy_s"]) == {"prefill"}
  assert set(util["token"]["busy_s"]) == {"decode"}
  for name, per in busy_s.items():                 # busy never exceeds the run
    assert sum(per.values()) <= run_s + 1e-12
