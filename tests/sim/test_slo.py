"""SLOs: reference latencies of a lone request, slowdown percentiles, the nine checks."""

import dataclasses
import math

import numpy as np
import pytest

from splitjax.config import ConfigError, from_config_dict
from splitjax.metrics import RequestStatus
from splitjax.model.presets import get_preset, preset_config_dict
from splitjax.serve_config import ClusterPolicy, SchedulerConfig, WorkloadConfig
from splitjax.sim import slo
from splitjax.sim.build import build
from splitjax.sim.hardware import HardwareError
from splitjax.sim.perf_model import PerfModelError, default_profile_path
from splitjax.sim.sim_config import (PerfModelKind, PoolConfig, SimClusterConfig, SimConfig,
                                     SLOConfig)

needs_profiles = pytest.mark.skipif(not default_profile_path().exists(),
                                    reason="needs ../shared/data/splitwise-profiles")
KINDS = [pytest.param(PerfModelKind.PROFILE, marks=needs_profiles), PerfModelKind.ROOFLINE]


@dataclasses.dataclass(frozen=True)
class Linear:
  """prefill 10 ms + 0.1 ms/token; a batch-1 decode step 5.2 ms + 1 us per context token."""
  def prefill_time(self, lens):
    return 0.01 + 1e-4 * sum(lens)

  def decode_step_times(self, batch, context_sums):
    return 0.005 + 2e-4 * batch + 1e-6 * np.asarray(context_sums, np.float64)


def test_reference_latencies_by_hand():
  ref = slo.reference_latencies(Linear(), [100, 100, 7], [4, 1, 2])
  # prompt 100, 4 tokens: prefill 0.02 s, then steps at contexts 101, 102, 103.
  steps = 3 * 0.0052 + 1e-6 * (101 + 102 + 103)
  np.testing.assert_allclose(ref.ttft_s, [0.02, 0.02, 0.0107], rtol=1e-12)
  np.testing.assert_allclose(ref.e2e_s, [0.02 + steps, 0.02, 0.0107 + 0.0052 + 8e-6],
                             rtol=1e-12)
  np.testing.assert_allclose(ref.tbt_s[[0, 2]], [steps / 3, 0.0052 + 8e-6], rtol=1e-12)
  assert math.isnan(ref.tbt_s[1])                       # one token: no TBT


def test_reference_latencies_input_checks():
  assert slo.reference_latencies(Linear(), [], []).e2e_s.size == 0
  with pytest.raises(ValueError, match="equal"):
    slo.reference_latencies(Linear(), [1, 2], [3])
  with pytest.raises(ValueError, match=">= 1"):
    slo.reference_latencies(Linear(), [5], [0])


def _lone_config(tmp_path, kind, policy=ClusterPolicy.COLOCATED, prompt=1500, output=40):
  trace = tmp_path / "one.csv"
  trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   f"2023-11-16 18:00:00.0000000,{prompt},{output}\n")
  a100 = PoolConfig(1, "dgx-a100")
  return SimConfig(model=get_preset("llama2-70b"),
                   cluster=SimClusterConfig(prompt=a100, token=a100, colocated=a100,
                                            perf_model=kind),
                   scheduler=SchedulerConfig(policy=policy),
                   workload=WorkloadConfig(trace=str(trace), duration_s=0.0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("leap", [True, False])
@pytest.mark.parametrize("output", [1, 2, 300])
def test_a_lone_request_on_the_reference_machine_has_slowdown_one(tmp_path, kind, leap, output):
  cfg = dataclasses.replace(_lone_config(tmp_path, kind, output=output), leap=leap)
  sim, specs = build(cfg)
  records = sim.run(specs).records
  assert [r.status for r in records] == [RequestStatus.COMPLETED]
  slow = slo.slowdowns(records, slo.reference_perf_model(cfg))
  assert slow[slo.SLOMetric.TTFT] == pytest.approx([1.0], rel=1e-12)
  assert slow[slo.SLOMetric.E2E] == pytest.approx([1.0], rel=1e-12)
  assert slow[slo.SLOMetric.TBT] == pytest.approx([1.0] if output > 1 else [], rel=1e-9)
  assert slo.evaluate(cfg, records).met


@pytest.mark.parametrize("kind", KINDS)
def test_a_lone_split_request_is_slowed_only_by_its_kv_transfer(tmp_path, kind):
  cfg = _lone_config(tmp_path, kind, policy=ClusterPolicy.SPLIT, prompt=300)  # serialized
  sim, specs = build(cfg)
  (rec,) = sim.run(specs).records
  ref = slo.reference_latencies(slo.reference_perf_model(cfg), [300], [40])
  slow = slo.slowdowns([rec], slo.reference_perf_model(cfg))
  assert rec.transfer_s > 0
  assert slow[slo.SLOMetric.TTFT] == pytest.approx([1.0], rel=1e-12)
  assert slow[slo.SLOMetric.E2E] == pytest.approx([1 + rec.transfer_s / ref.e2e_s[0]],
                                                  rel=1e-12)
  assert slow[slo.SLOMetric.TBT] == pytest.approx(
      [1 + rec.transfer_s / 39 / ref.tbt_s[0]], rel=1e-9)  # the gap after the first token


def _uniform(ttft, tbt, e2e, n=10):
  return {slo.SLOMetric.TTFT: np.full(n, ttft), slo.SLOMetric.TBT: np.full(n, tbt),
          slo.SLOMetric.E2E: np.full(n, e2e)}


def test_slos_hold_exactly_at_their_limits():
  report = slo.check(_uniform(2.0, 1.25, 1.25), SLOConfig())
  assert report.met
  assert all(c.met for c in report.checks) and len(report.checks) == 9
  # p90 / p99 limits are looser: a tail at 3x / 6x TTFT still holds.
  ttft = np.concatenate([np.ones(90), np.full(9, 3.0), [6.0]])
  assert slo.check(_uniform(1, 1, 1) | {slo.SLOMetric.TTFT: ttft}, SLOConfig()).met


@pytest.mark.parametrize("metric,limit", [(slo.SLOMetric.TTFT, 2.0), (slo.SLOMetric.TBT, 1.25),
                                          (slo.SLOMetric.E2E, 1.25)])
def test_one_slowdown_above_its_limit_fails_the_whole_slo(metric, limit):
  slow = _uniform(1.0, 1.0, 1.0) | {metric: np.full(10, np.nextafter(limit, 3.0))}
  report = slo.check(slow, SLOConfig())
  assert not report.met
  failing = [c.name for c in report.checks if not c.met]
  assert failing == [f"{metric.value}_p50"]
  d = report.slo_dict()
  assert d["met"] is False and d["per_metric"][f"{metric.value}_p50"]["limit"] == limit
  assert d["reference_hardware"] == "dgx-a100"
  assert set(report.slowdown_dict()) == {"ttft", "tbt", "e2e"}
  assert "NOT met" in report.line() and f"{metric.value}_p50" in report.line()


def test_no_completed_request_fails_and_only_one_token_outputs_pass_tbt():
  nothing = slo.check(_uniform(1.0, 1.0, 1.0, n=0), SLOConfig())
  assert not nothing.met and math.isnan(nothing.slowdown_dict()["ttft"]["p50"])
  assert [c.met for c in nothing.checks] == [False] * 9
  one_token = slo.check(_uniform(1.0, 1.0, 1.0) | {slo.SLOMetric.TBT: np.zeros(0)}, SLOConfig())
  assert one_token.met and math.isnan(one_token.slowdown_dict()["tbt"]["p99"])


def test_custom_limits_come_from_the_config():
  report = slo.check(_uniform(2.5, 1.0, 1.0), SLOConfig(ttft=(3.0, 3.0, 3.0)))
  assert report.met


@pytest.mark.parametrize("field,value", [("ttft", (2.0, 3.0)), ("tbt", (1.25, 0.0, 5.0)),
                                         ("e2e", (1.0, -1.0, 2.0)),
                                         ("e2e", (1.0, 1.0, math.inf)),
                                         ("reference_hardware", "")])
def test_bad_slo_config_is_a_config_error(field, value):
  with pytest.raises(ConfigError, match=f"slo.{field}"):
    SLOConfig(**{field: value})


def test_slo_section_reads_from_a_config_dict():
  cfg = from_config_dict(SimConfig, {"model": preset_config_dict("llama2-70b"),
                                    "slo": {"ttft": [4, 5, 6]}})
  assert cfg.slo.ttft == (4.0, 5.0, 6.0) and cfg.slo.reference_hardware == "dgx-a100"
  with pytest.raises(ConfigError, match="slo.tbt"):
    from_config_dict(SLOConfig, {"tbt": 2.0}, "slo")


def test_a_reference_machine_without_a_profile_is_a_clear_error(tmp_path):
  cfg = _lone_config(tmp_path, PerfModelKind.PROFILE)
  with pytest.raises(PerfModelError, match="SLO reference machine 'cpu-host'.*roofline"):
    slo.reference_perf_model(dataclasses.replace(cfg, slo=SLOConfig(reference_hardware="cpu-host")))
  with pytest.raises(HardwareError):
    slo.reference_perf_model(dataclasses.replace(cfg, slo=SLOConfig(reference_hardware="tpu")))
