"""Faults through the driver loop with the fake executor (no jax): instances
failing mid-run and KV transfers failing (retried, then recomputed) leave every
request completed with exactly its fault-free tokens (or failed with a reason
when nothing can take it), and nothing held anywhere; the online engine does
the same through its inbox."""

import pytest
from hypothesis import event, given, settings, strategies as st

from splitjax.metrics import RequestStatus
from splitjax.runtime.clock import VirtualClock
from splitjax.runtime.fake_executor import FakeTimes, fake_token
from splitjax.runtime.faults import InstanceFault, TransferFaults
from splitjax.runtime.loop import replay
from splitjax.runtime.online_types import EndEvent, EndReason, Generation, OnlineLimits
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.scheduling.records import Role
from splitjax.serve_config import ClusterPolicy, SchedulerConfig
from splitjax.workload import RequestSpec
from tests.runtime.test_loop import CheckingExecutor
from tests.runtime.test_online import Collector, _engine, _wait_idle

POLICIES = [(ClusterPolicy.SPLIT, False), (ClusterPolicy.SPLIT, True),
            (ClusterPolicy.COLOCATED, False), (ClusterPolicy.COLOCATED_CHUNKED, False)]
NAMES = {ClusterPolicy.SPLIT: ["prompt0", "prompt1", "token0", "token1"]}


def _cluster(policy, mixed, retries_faults=None):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed, borrow_prompt_tokens=300,
                        chunk_token_budget=128)
  coord = Coordinator(make_instances(home_roles(cfg, 2, 2, 3), 4, 2048, 1024),
                      make_policies(cfg), max_prompt_tokens=1024)
  ex = CheckingExecutor(coord, transfer_faults=retries_faults or TransferFaults())
  return coord, ex


def _names(policy):
  return NAMES.get(policy, ["colocated0", "colocated1", "colocated2"])


def _check(result, coord, ex, specs):
  assert coord.idle and not ex.busy
  assert not ex._slots and not ex._inserted and not ex._failed_transfers and not ex._running
  for r in result.records:
    if r.status == RequestStatus.COMPLETED:
      assert r.token_ids == [fake_token(r.request_id, i) for i in range(r.output_tokens)]
      assert r.token_times_s == sorted(r.token_times_s)
    else:                      # only when no live instance could take it
      assert r.status in (RequestStatus.FAILED, RequestStatus.REJECTED), r.status
      assert "live instance" in r.reason, r.reason
  for i in coord.instances:
    assert i.kv.used_blocks == 0 and len(i.free_slots) == i.decode_slots


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(POLICIES),
       st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 600), st.integers(1, 40)),
                min_size=1, max_size=25),
       st.lists(st.tuples(st.floats(0, 0.4), st.integers(0, 3)), max_size=3),
       st.integers(0, 6), st.integers(0, 2))
def test_faults_leave_fault_free_tokens(policy, reqs, kills, n_transfer_faults, retries):
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  coord, ex = _cluster(*policy, TransferFaults(next=n_transfer_faults))
  names = _names(policy[0])
  faults = [InstanceFault(t, names[k % len(names)]) for t, k in kills]
  faults = list({f.instance: f for f in faults}.values())      # each instance fails once
  result = replay(coord, ex, specs, VirtualClock(), sample_every_s=0.05, faults=faults,
                  transfer_retries=retries)
  _check(result, coord, ex, specs)
  d = result.to_dict()["faults"]
  event(f"resubmitted: {bool(d['resubmitted'])}, retried: {bool(d['transfer_retried'])}, "
        f"fallback: {bool(d['transfer_fallback'])}")
  assert d["instance_failed"] <= len(faults)
  assert d["transfer_retried"] + d["transfer_fallback"] <= n_transfer_faults
  if any(i.role is not Role.DOWN for i in coord.instances) and policy[0] != ClusterPolicy.SPLIT:
    assert result.summary.completed == len(specs)


def test_killing_a_token_instance_mid_stream_recomputes_its_requests():
  specs = [RequestSpec(i, 0.001 * i, 50 + 10 * i, 40) for i in range(8)]
  clean_coord, clean_ex = _cluster(ClusterPolicy.SPLIT, False)
  clean = replay(clean_coord, clean_ex, specs, VirtualClock())
  coord, ex = _cluster(ClusterPolicy.SPLIT, False)
  result = replay(coord, ex, specs, VirtualClock(), faults=[InstanceFault(0.06, "token0")])
  _check(result, coord, ex, specs)
  assert result.summary.completed == 8
  assert [r.token_ids for r in result.records] == [r.token_ids for r in clean.records]
  moved = [r for r in result.records if r.token_instance == "token1"]
  assert len(moved) > len([r for r in clean.records if r.token_instance == "token1"])
  # TTFT stays the first attempt's; the recompute shows as one long gap.
  resumed = [w for w in ex.launched if any(r.resumed for r in w.prefill)]
  assert resumed and result.to_dict()["faults"]["resubmitted"] >= len(resumed[0].prefill)
  rid = next(r.request_id for r in resumed[0].prefill if r.resumed)
  assert result.records[rid].ttft_s == pytest.approx(clean.records[rid].ttft_s)


def test_a_transfer_failure_is_retried_then_falls_back_to_recomputing():
  specs = [RequestSpec(i, 0.0, 60, 10) for i in range(4)]
  coord, ex = _cluster(ClusterPolicy.SPLIT, False, TransferFaults(requests={1: 1, 2: 3}))
  result = replay(coord, ex, specs, VirtualClock(), transfer_retries=2)
  _check(result, coord, ex, specs)
  assert result.summary.completed == 4
  f = result.to_dict()["faults"]
  # request 1: one failure, one retry; request 2: fails, retried twice, fails a
  # third time: recomputed (its first token kept, prompt + that token prefilled).
  assert (f["transfer_retried"], f["transfer_fallback"], f["resubmitted"]) == (3, 1, 1)
  again = [w for w in ex.launched if any(r.request_id == 2 for r in w.prefill)]
  assert len(again) == 2 and again[1].prefill[0].resumed == 1


def test_losing_every_token_instance_without_a_mixed_pool_fails_with_a_reason():
  specs = [RequestSpec(i, 0.0, 40, 30) for i in range(6)]
  coord, ex = _cluster(ClusterPolicy.SPLIT, False)
  result = replay(coord, ex, specs, VirtualClock(),
                  faults=[InstanceFault(0.03, "token0"), InstanceFault(0.03, "token1")])
  _check(result, coord, ex, specs)
  assert result.summary.failed == 6
  # token0's requests moved to token1 first, then token1 failed too.
  assert {r.reason for r in result.records} == {
      "instance token1 failed; could not be recomputed: no live instance takes tokens"}


def _stream(sink, timeout=10.0):
  """(token ids by index, end event) of one request's sink."""
  tokens = {}
  while True:
    ev = sink.q.get(timeout=timeout)
    if isinstance(ev, EndEvent):
      return [tokens[i] for i in range(len(tokens))], ev
    assert ev.index not in tokens
    tokens[ev.index] = ev.token_id


def test_the_online_engine_fails_an_instance_through_its_inbox():
  engine, coord, ex = _engine(times=FakeTimes(0.01, 0.0, 0.01, 0.0, 0.002), mixed=True,
                              limits=OnlineLimits(transfer_retries=1))
  try:
    sinks = [Collector() for _ in range(4)]
    engine.fail_transfers(request_ids=[3, 3])  # 3: retried once, then recomputed
    ids = [engine.submit(Generation((1,) * (10 + i), 30), s) for i, s in enumerate(sinks)]
    first = sinks[0].q.get(timeout=5)
    sinks[0].q.put(first)                      # request 0 has emitted: mid-stream
    out = engine.fail_instance("token0").result(timeout=5)
    assert out.instance == "token0" and not out.failed and out.resubmitted
    with pytest.raises(ValueError, match="already down"):
      engine.fail_instance("token0").result(timeout=5)
    with pytest.raises(KeyError):
      engine.fail_instance("token7").result(timeout=5)
    for rid, s in zip(ids, sinks):
      tokens, end = _stream(s)
      assert end.reason == EndReason.LENGTH
      assert tokens == [fake_token(rid, i) for i in range(30)]
    _wait_idle(engine, coord)
    assert [i.role for i in coord.instances] == [Role.MIXED, Role.DOWN]  # covered
    assert not engine._run._retries and not ex._slots and not ex._inserted
  finally:
    engine.stop()
