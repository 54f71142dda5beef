"""The online driver with the fake executor on the wall clock (no jax): tokens
stream to sinks, stop ids and aborts end requests early and free everything,
admission is bounded, and a stopped engine fails what it holds."""

import queue

import pytest

from splitjax.runtime.fake_executor import FakeExecutor, FakeTimes, fake_token
from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import (EndEvent, EndReason, Generation, InvalidRequest,
                                           ModelLimits, OnlineLimits, Overloaded, TokenEvent)
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.serve_config import ClusterPolicy, SchedulerConfig

MODEL = ModelLimits(vocab_size=32000, max_prompt_tokens=512, max_context_tokens=1024)
FAST = FakeTimes(0.002, 0.00001, 0.002, 0.0001, 0.001)
SLOW = FakeTimes(0.05, 0.0, 0.05, 0.0, 0.01)


def _engine(policy=ClusterPolicy.SPLIT, times=FAST, limits=OnlineLimits(), mixed=False):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed)
  coord = Coordinator(make_instances(home_roles(cfg, 1, 1, 2), 4, 4096, 1024),
                      make_policies(cfg), 512)
  ex = FakeExecutor(times)
  return OnlineEngine(coord, lambda ids, sp: ex, MODEL, limits).start(), coord, ex


class Collector:
  def __init__(self):
    self.q = queue.Queue()

  def __call__(self, ev):
    self.q.put(ev)

  def until_end(self, timeout=10.0):
    tokens = []
    while True:
      ev = self.q.get(timeout=timeout)
      if isinstance(ev, EndEvent):
        return tokens, ev
      assert isinstance(ev, TokenEvent) and ev.index == len(tokens)
      tokens.append(ev.token_id)


def _wait_idle(engine, coord):
  for _ in range(200):
    snap = engine.snapshot
    if snap.open == 0 and all(not i.decoding and not i.kv_used_tokens for i in snap.instances):
      return
    engine._wake.wait(0.02)
  raise AssertionError(f"not idle: {engine.snapshot}")


@pytest.mark.parametrize("policy", list(ClusterPolicy))
def test_streams_tokens_and_stops_on_stop_ids(policy):
  engine, coord, ex = _engine(policy)
  try:
    sinks = [Collector() for _ in range(6)]
    ids = [engine.submit(Generation((1,) * (10 + 30 * i), 8), s) for i, s in enumerate(sinks)]
    stop_sink = Collector()
    sid = engine.submit(Generation((5, 6, 7), 20, stop_ids=frozenset({fake_token(6, 3)})),
                        stop_sink)
    assert sid == 6
    for rid, s in zip(ids, sinks):
      tokens, end = s.until_end()
      assert tokens == [fake_token(rid, i) for i in range(8)]
      assert end.reason == EndReason.LENGTH and end.record.tokens == 8
    tokens, end = stop_sink.until_end()
    assert tokens == [fake_token(6, i) for i in range(4)] and end.reason == EndReason.STOP
    _wait_idle(engine, coord)
    assert not ex._slots and not ex._inserted
    run = engine._run
    assert not (run.records or run.live or run.why or coord.role_changes)
  finally:
    engine.stop()


def test_abort_frees_the_request_in_every_phase():
  engine, coord, ex = _engine(times=SLOW)
  try:
    sinks = [Collector() for _ in range(5)]
    ids = [engine.submit(Generation((3,) * 20, 500), s) for s in sinks]
    first = sinks[0].q.get(timeout=5)          # request 0 got its first token
    assert isinstance(first, TokenEvent)
    for rid in ids:                            # others queued / prefilling / transferring
      engine.abort(rid)
    for s in sinks:
      _, end = s.until_end()
      assert end.reason == EndReason.ABORTED and "aborted" in end.detail
    _wait_idle(engine, coord)
    assert coord.idle or all(not i.held and not i.incoming for i in coord.instances)
    ok = Collector()                           # the freed slots serve again
    engine.submit(Generation((1, 2), 3), ok)
    assert ok.until_end()[1].reason == EndReason.LENGTH
  finally:
    engine.stop()


def test_admission_is_bounded_and_invalid_requests_refused():
  engine, coord, _ = _engine(times=SLOW, limits=OnlineLimits(max_waiting=2, max_open=3))
  try:
    with pytest.raises(InvalidRequest, match="empty prompt"):
      engine.submit(Generation((), 4), Collector())
    with pytest.raises(InvalidRequest, match="context limit"):
      engine.submit(Generation((1,) * 100, 1000), Collector())
    with pytest.raises(InvalidRequest, match="out of the vocabulary"):
      engine.submit(Generation((1, 32000), 4), Collector())
    sinks = [Collector(), Collector()]
    for s in sinks:
      engine.submit(Generation((1, 2, 3), 50), s)
    with pytest.raises(Overloaded, match="queue full") as e:
      engine.submit(Generation((1, 2, 3), 50), Collector())
    assert e.value.retryable
  finally:
    engine.stop()
  for s in sinks:                              # stopping fails what was open, with a reason
    assert s.until_end()[1].reason == EndReason.FAILED
  with pytest.raises(Overloaded, match="stopped") as e:
    engine.submit(Generation((1,), 1), Collector())
  assert not e.value.retryable
  assert not engine.alive and not engine.snapshot.alive


def test_a_failing_sink_aborts_only_its_request():
  engine, coord, _ = _engine()
  try:
    def bad(ev):
      raise RuntimeError("client gone")
    engine.submit(Generation((1, 2, 3), 10), bad)
    good = Collector()
    engine.submit(Generation((1, 2, 3), 10), good)
    assert good.until_end()[1].reason == EndReason.LENGTH
    _wait_idle(engine, coord)
    assert engine.alive
  finally:
    engine.stop()
