"""Judging a window of arrivals, and stopping a simulation once its verdict is
certain: the early-stopped verdict equals the verdict of the run simulated to
the end, for feasible and overloaded probes alike."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from splitjax.config import from_config_dict
from splitjax.metrics import RequestStatus
from splitjax.sim import slo
from splitjax.sim.build import build
from splitjax.sim.sim_config import PoolConfig, SimConfig, design_config_dict
from splitjax.sim.window import CertainVerdict, MeasureWindow, _needed, shortest_steps
from splitjax.workload import RequestSpec

H = "dgx-h100"


def _config(tmp_path, rate: float, machines: tuple[int, int]) -> SimConfig:
  rows = [(s, 200 + 97 * s % 1800, 1 + 13 * s % 300) for s in range(40)]
  trace = tmp_path / "t.csv"
  trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
      f"2023-11-16 18:{s // 60:02d}:{s % 60:02d}.5000000,{p},{o}\n" for s, p, o in rows))
  c = design_config_dict(prompt=PoolConfig(machines[0], H), token=PoolConfig(machines[1], H))
  c.workload.trace = str(trace)
  c.workload.rate = rate
  c.workload.rate_duration_s = 300 / rate          # ~300 requests
  c.cluster.perf_model = "roofline"
  c.cluster.max_batch = 16                          # overload shows within a few hundred
  return from_config_dict(SimConfig, c)


def _verdict(cfg: SimConfig, window: MeasureWindow, early: bool, every_s: float = 0.0):
  """(feasible, failing checks, judged slowdowns) of one simulation."""
  sim, specs = build(cfg)
  judged = window.judged(specs, cfg.workload.rate_duration_s)
  perf = slo.reference_perf_model(cfg)
  ref = slo.reference_latencies(perf, [s.prompt_tokens for s in judged],
                                [s.output_tokens for s in judged])
  longest = max(s.prompt_tokens + s.output_tokens for s in judged)
  stop = (CertainVerdict(sim, judged, ref, cfg.slo,
                         shortest_steps(list(set(sim.perf.values())), longest), every_s)
          if early else None)
  result = sim.run(specs, stop=stop)
  if stop is not None and stop.passed:
    return True, stop, sim
  ids = {s.request_id for s in judged}
  records = [r for r in result.records if r.request_id in ids]
  failed = sum(r.status != RequestStatus.COMPLETED for r in records)
  if stop is not None and stop.failing:
    return False, stop, sim
  report = slo.check(slo.slowdowns(records, perf), cfg.slo)
  return report.met and not failed, report, sim


@settings(max_examples=12, deadline=None)
@given(rate=st.sampled_from([0.5, 2.0, 6.0, 15.0, 40.0]),
       machines=st.sampled_from([(1, 1), (2, 1), (1, 2)]),
       window=st.sampled_from([(0.0, 1.0), (0.25, 0.75), (0.1, 0.5)]),
       every_s=st.sampled_from([0.0, 3.0]))
def test_early_stop_gives_the_verdict_of_the_whole_run(tmp_path_factory, rate, machines,
                                                        window, every_s):
  cfg = _config(tmp_path_factory.mktemp("w"), rate, machines)
  w = MeasureWindow(*window)
  full, full_report, full_sim = _verdict(cfg, w, early=False)
  cut, cut_report, cut_sim = _verdict(cfg, w, early=True, every_s=every_s)
  assert full == cut
  assert cut_sim.events <= full_sim.events
  if cut and not isinstance(cut_report, CertainVerdict):  # every judged request ended
    assert cut_report.slowdown_dict() == full_report.slowdown_dict()


@settings(max_examples=8, deadline=None)
@given(rate=st.sampled_from([2.0, 6.0, 15.0, 40.0]),
       machines=st.sampled_from([(1, 1), (2, 1), (1, 2)]),
       leap=st.booleans())
def test_bounds_never_pass_the_values_the_run_ends_with(tmp_path_factory, rate, machines, leap):
  """At every sample, each pending request's bounds hold against its final
  record: last token no earlier than bounded, first token as stated. (Leaps
  emit tokens their records show only at the leap's end.)"""
  cfg = _config(tmp_path_factory.mktemp("b"), rate, machines)
  sim, specs = build(cfg)
  sim.leap = leap
  ref = slo.reference_latencies(slo.reference_perf_model(cfg), [s.prompt_tokens for s in specs],
                                [s.output_tokens for s in specs])
  longest = max(s.prompt_tokens + s.output_tokens for s in specs)
  verdict = CertainVerdict(sim, specs, ref, cfg.slo,
                           shortest_steps(list(set(sim.perf.values())), longest))
  seen, mid_leap = {}, 0
  def stop(now):
    nonlocal mid_leap
    flight = sim.in_flight(now)
    mid_leap += any(done for done, _ in flight.values())
    for rid, rec in sim.records.items():
      if rec.status == RequestStatus.PENDING and rec.arrival_s <= now:
        first, end = verdict._bounds(rec, now, flight.get(rid))
        seen.setdefault(rid, []).append((now, first, end))
    return False
  sim.run(specs, stop=stop)
  assert seen
  for rid, bounds in seen.items():
    rec = sim.records[rid]
    assert rec.status == RequestStatus.COMPLETED
    for now, first, end in bounds:
      assert end <= rec.last_token_s, (rid, now)
      assert first is None or first == rec.first_token_s, (rid, now)
      assert first is not None or rec.first_token_s >= now, (rid, now)
  if leap and rate >= 15.0:
    assert mid_leap                    # the case the in-flight tokens are for did occur


def test_an_overloaded_probe_stops_early_and_a_window_skips_the_drain(tmp_path):
  cfg = _config(tmp_path, 40.0, (1, 1))
  ok, stop, sim = _verdict(cfg, MeasureWindow(0.25, 0.75), early=True)
  assert not ok and stop.failing and "certain to fail" in stop.reason
  assert sim.stopped_s < cfg.workload.rate_duration_s
  failed = [r for r in sim.records.values() if r.status == RequestStatus.FAILED]
  assert failed and all("the run stopped at" in r.reason for r in failed)
  easy = _config(tmp_path, 0.5, (1, 1))
  ok, stop, sim = _verdict(easy, MeasureWindow(0.0, 0.5), early=True)
  assert ok and sim.stopped_s is not None                    # the second half is never run
  assert sim.stopped_s < easy.workload.rate_duration_s
  # Certain to hold before the last judged request ends: the few still pending
  # could not fail a check even with unbounded latencies.
  assert stop.passed and "certain to hold" in stop.reason
  judged = MeasureWindow(0.0, 0.5).judged(sorted(sim.records.values(),
                                                 key=lambda r: r.arrival_s),
                                          easy.workload.rate_duration_s)
  assert any(r.status == RequestStatus.FAILED for r in judged)  # ended by the stop


def test_window_selects_arrivals():
  specs = [RequestSpec(i, float(i), 10, 5) for i in range(10)]
  assert [s.request_id for s in MeasureWindow(0.2, 0.6).judged(specs, 10.0)] == [2, 3, 4, 5]
  assert len(MeasureWindow().judged(specs, 9.0)) == 10
  assert [s.request_id for s in MeasureWindow(0.5, 1.0).judged(specs, 9.0)] == [5, 6, 7, 8, 9]
  with pytest.raises(ValueError, match="0 <= start < end <= 1"):
    MeasureWindow(0.5, 0.5)


@given(values=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=60),
       limit=st.floats(0.0, 10.0), q=st.sampled_from([50, 90, 99]))
def test_enough_values_over_a_limit_put_the_percentile_over_it(values, limit, q):
  if sum(v > limit for v in values) >= _needed(len(values), q):
    assert np.percentile(values, q) > limit
