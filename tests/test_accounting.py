"""Energy / cost accountant: hand-checkable arithmetic, conservation of time,
energy and cost per instance, per request and over time, on hand-made
iterations and through the real simulator."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from splitjax import accounting, accounts
from splitjax.accounting import EnergyLedger
from splitjax.accounts import KINDS, InstanceRates
from splitjax.metrics import RequestRecord, RequestStatus
from splitjax.model.presets import get_preset
from splitjax.scheduling.coordinator import (Coordinator, home_roles, make_instances,
                                             make_policies)
from splitjax.scheduling.records import Chunk, Role, Work, WorkKind
from splitjax.serve_config import ClusterPolicy, SchedulerConfig, WorkloadConfig
from splitjax.sim.build import build
from splitjax.sim.driver import Simulator
from splitjax.sim.hardware import get_hardware
from splitjax.sim.perf_model import Phase
from splitjax.sim.roofline import RooflineModel
from splitjax.sim.sim_config import PoolConfig, SimClusterConfig, SimConfig
from splitjax.workload import RequestSpec
from tests.scheduling.helpers import inst, req
from tests.sim.test_driver import POLICIES, LinearModel

# The hand case: one instance, 2 s prefill at 6 kW, 3 s decode at 4 kW, 5 s idle at 1 kW.
HAND = InstanceRates(prefill_w=6000.0, decode_w=4000.0, mixed_w=5000.0, idle_w=1000.0,
                     usd_per_hour=36.0)


def _record(request_id, tokens, status=RequestStatus.COMPLETED):
  rec = RequestRecord(request_id, 0.0, 100, tokens, token_times_s=None)
  rec.add_tokens(1.0, 2.0, tokens, 0.1)
  rec.finish(status, "" if status == RequestStatus.COMPLETED else "test")
  return rec


def _hand_ledger():
  """prefill [0, 2): prompts of 100 and 300 tokens; decode leap [2, 5): both
  rows, 10 steps; idle [5, 10)."""
  p = inst("c0", Role.COLOCATED)
  a, b = req(1, 100, 11), req(2, 300, 11)
  ledger = EnergyLedger([p], [HAND])
  ledger(0, Work(WorkKind.PREFILL, p, prefill=(a, b)), 0.0, 2.0)
  ledger(0, Work(WorkKind.DECODE, p, decode=(a, b), steps=10), 2.0, 5.0)
  return ledger


def test_hand_checkable_energy_cost_and_shares():
  acc = _hand_ledger().account(10.0, [_record(1, 11), _record(2, 11)], window_s=1.0,
                               power_budget_w=5000.0)
  (i,) = acc.instances
  assert i.busy_s == {WorkKind.PREFILL: 2.0, WorkKind.DECODE: 3.0, WorkKind.MIXED: 0.0}
  assert i.idle_s == 5.0
  # 2 s x 6 kW + 3 s x 4 kW + 5 s x 1 kW = 29 kJ = 8.06 Wh; 10 s at $36/h = $0.10.
  assert i.energy_j == {WorkKind.PREFILL: 12000.0, WorkKind.DECODE: 12000.0,
                        WorkKind.MIXED: 0.0}
  assert i.idle_energy_j == 5000.0 and acc.energy_j == 29000.0
  assert acc.energy_j / accounts.JOULES_PER_WH == pytest.approx(8.0555556)
  assert acc.cost_usd == pytest.approx(0.10) and acc.idle_cost_usd == pytest.approx(0.05)
  # Prefill energy 12 kJ split 100:300 tokens, decode 12 kJ split 10:10 steps.
  r1, r2 = acc.requests.get(1), acc.requests.get(2)
  assert r1.energy_wh == pytest.approx((3000 + 6000) / 3600)
  assert r2.energy_wh == pytest.approx((9000 + 6000) / 3600)
  assert r1.energy_share == pytest.approx({WorkKind.PREFILL: 1 / 3, WorkKind.DECODE: 2 / 3,
                                           WorkKind.MIXED: 0.0})
  # Busy cost $0.05: prefill $0.02 split 1:3, decode $0.03 split 1:1.
  assert r1.cost_usd == pytest.approx(0.005 + 0.015) and r2.cost_usd == pytest.approx(0.03)
  assert r1.cost_share[WorkKind.PREFILL] == pytest.approx(0.25)
  with pytest.raises(KeyError):
    acc.requests.get(3)
  p = acc.power
  assert p.over_time_w == pytest.approx([6000] * 2 + [4000] * 3 + [1000] * 5)
  assert (p.peak_w, p.peak_at_s, p.average_w, p.peak_window_w) == (6000.0, 0.0, 2900.0, 6000.0)
  assert p.budget_w == 5000.0 and p.over_budget_s == 2.0 and p.peak_over_budget == 1.2
  assert p.rated_w == 6000.0


def test_hand_case_per_run_figures_and_json():
  records = [_record(1, 11), _record(2, 11), _record(3, 5, RequestStatus.FAILED)]
  d = accounting.summary_dict(_hand_ledger(), 10.0, records, window_s=4.0)
  json.dumps(d, allow_nan=False)                      # JSON-ready, no NaN
  assert d["energy_kwh"] == pytest.approx(29000 / 3.6e6)
  assert d["energy_kwh_by_phase"] == pytest.approx(
      {"prefill": 12000 / 3.6e6, "decode": 12000 / 3.6e6, "mixed": 0.0, "idle": 5000 / 3.6e6})
  # Two completed requests, 22 output tokens: per 1k / per 1M scale the whole run.
  assert d["per_1k_requests"] == pytest.approx(
      {"energy_kwh": 29000 / 3.6e6 / 2 * 1e3, "cost_usd": 0.10 / 2 * 1e3})
  assert d["per_1m_output_tokens"] == pytest.approx(
      {"energy_kwh": 29000 / 3.6e6 / 22 * 1e6, "cost_usd": 0.10 / 22 * 1e6})
  assert d["requests"]["attributed_energy_kwh"] == pytest.approx(24000 / 3.6e6)
  assert d["requests"]["attributed_cost_usd"] == pytest.approx(0.05)
  # 4 s windows: (2 x 6 + 2 x 4) / 4, (4 + 3 x 1) / 4, a 2 s window at idle.
  assert d["power"]["window_s"] == 4.0
  assert d["power"]["over_time_w"] == pytest.approx([5000, 1750, 1000])
  assert d["pools"]["colocated"]["busy_s"] == {"prefill": 2.0, "decode": 3.0, "mixed": 0.0}
  assert d["pools"]["colocated"]["idle_s"] == 5.0


def test_accounts_can_be_taken_mid_run():
  ledger = _hand_ledger()
  assert ledger.account(5.0).energy_j == 24000.0
  p = inst("c0", Role.COLOCATED)
  ledger(0, Work(WorkKind.PREFILL, p, prefill=(req(3, 10, 2),)), 5.0, 6.0)   # keeps growing
  assert ledger.iterations == 3 and ledger.account(10.0).energy_j == 24000 + 6000 + 4000


def test_buffered_iterations_give_the_same_accounts_whenever_flushed():
  p, t = inst("p0", Role.PROMPT), inst("t0", Role.TOKEN)
  works = [(0, Work(WorkKind.PREFILL, p, prefill=(req(k, 10 + k, 5),)), k, k + 0.5)
           for k in range(7)]
  works += [(1, Work(WorkKind.DECODE, t, decode=(req(1, 11, 5), req(2, 12, 5)), steps=3),
             k + 0.5, k + 1.0) for k in range(7)]
  accounts = []
  for flush in (1, 3, 4096):
    ledger = EnergyLedger([p, t], [HAND, HAND])
    ledger._FLUSH = flush
    for w in works:
      ledger(*w)
    assert ledger.iterations == len(works)
    accounts.append(ledger.account(10.0))
  for a in accounts[1:]:
    assert a.to_dict() == accounts[0].to_dict()
    assert (a.requests.energy_j == accounts[0].requests.energy_j).all()


@pytest.mark.parametrize("id_step", [1, 10 ** 9])      # dense ids index sums; sparse ones not
def test_request_accounts_read_in_blocks_equal_one_pass(id_step):
  p, t = inst("p0", Role.PROMPT), inst("t0", Role.TOKEN)
  works = [(0, Work(WorkKind.PREFILL, p, prefill=(req(k * id_step, 10 + k, 5),)), k, k + 0.5)
           for k in range(7)]
  works += [(1, Work(WorkKind.DECODE, t, decode=(req(id_step, 11, 5), req(2 * id_step, 12, 5)),
                     steps=3), k + 0.5, k + 1.0) for k in range(7)]
  accounts = []
  for block_rows in (1, 5, 1 << 22):
    ledger = EnergyLedger([p, t], [HAND, HAND])
    ledger._BLOCK_ROWS = block_rows
    for w in works:
      ledger(*w)
    accounts.append(ledger.account(10.0))
  for a in accounts:
    assert list(a.requests.request_ids) == [k * id_step for k in range(7)]
    assert a.requests.energy_j == pytest.approx(accounts[-1].requests.energy_j, rel=1e-12)
    assert a.requests.cost_usd == pytest.approx(accounts[-1].requests.cost_usd, rel=1e-12)


def test_mixed_iteration_splits_by_chunk_tokens_and_decode_rows():
  p = inst("c0", Role.COLOCATED)
  a, b, c = req(1, 100, 5), req(2, 100, 5), req(3, 80, 5)
  ledger = EnergyLedger([p], [HAND])
  ledger(0, Work(WorkKind.MIXED, p, decode=(a, b), chunks=(Chunk(c, 0, 48),)), 0.0, 1.0)
  acc = ledger.account(1.0)
  # 5 kJ over 50 tokens: 48 for the chunk, one per decode row.
  assert [acc.requests.get(i).energy_wh * 3600 for i in (1, 2, 3)] == pytest.approx(
      [100, 100, 4800])
  assert acc.requests.get(3).energy_share[WorkKind.MIXED] == 1.0


def test_kv_transfers_are_counted_on_both_sides_without_energy():
  p, t = inst("p0", Role.PROMPT), inst("t0", Role.TOKEN)
  ledger = EnergyLedger([p, t], [HAND, HAND])
  rec = _record(1, 3)
  rec.prompt_instance, rec.token_instance = "p0", "t0"
  rec.transfer_bytes, rec.transfer_s = 1000, 0.25
  acc = ledger.account(2.0, [rec])
  assert (acc.instances[0].kv_sent_bytes, acc.instances[0].kv_send_exposed_s) == (1000, 0.25)
  assert (acc.instances[1].kv_received_bytes, acc.instances[1].kv_sent_bytes) == (1000, 0)
  assert acc.energy_j == 2 * 2.0 * HAND.idle_w


def test_overlapping_iterations_break_conservation_instead_of_hiding():
  p = inst("c0", Role.COLOCATED)
  ledger = EnergyLedger([p], [HAND])
  ledger(0, Work(WorkKind.PREFILL, p, prefill=(req(1, 10, 2),)), 0.0, 2.0)
  ledger(0, Work(WorkKind.PREFILL, p, prefill=(req(2, 10, 2),)), 1.0, 3.0)
  (i,) = ledger.account(4.0).instances
  assert i.total_busy_s + i.idle_s == 5.0            # != 4: the overlap shows


def test_bad_inputs():
  with pytest.raises(ValueError, match="decode_w"):
    InstanceRates(1.0, -1.0, 1.0, 1.0, 1.0)
  with pytest.raises(ValueError, match="rates"):
    EnergyLedger([inst("a", Role.PROMPT)], [])
  ledger = _hand_ledger()
  with pytest.raises(ValueError, match="run_s"):
    ledger.account(4.0)                              # the decode ends at 5 s


_iteration = st.tuples(st.integers(0, 2), st.sampled_from(list(WorkKind)), st.floats(0, 3),
                       st.floats(0, 2), st.lists(st.integers(1, 500), min_size=1, max_size=4),
                       st.integers(1, 20))
_rates = st.builds(InstanceRates, *[st.floats(0, 1e4)] * 4, st.floats(0, 100))


@settings(max_examples=200, deadline=None)
@given(st.lists(_iteration, max_size=30), st.lists(_rates, min_size=3, max_size=3),
       st.floats(0.05, 7), st.integers(1, 20), st.floats(0, 3e4))
def test_time_energy_and_cost_are_conserved(iterations, rates, window, max_points, budget):
  insts = [inst("p0", Role.PROMPT), inst("t0", Role.TOKEN), inst("t1", Role.TOKEN)]
  ledger, clock, rid = EnergyLedger(insts, rates), [0.0] * 3, 0
  for i, kind, gap, length, prompts, steps in iterations:
    rows = tuple(req(rid + k, n, 5) for k, n in enumerate(prompts))
    rid += len(rows)
    work = (Work(kind, insts[i], prefill=rows) if kind == WorkKind.PREFILL else
            Work(kind, insts[i], decode=rows[1:], chunks=(Chunk(rows[0], 0, prompts[0]),))
            if kind == WorkKind.MIXED else Work(kind, insts[i], decode=rows, steps=steps))
    start = clock[i] + gap
    clock[i] = start + length
    ledger(i, work, start, clock[i])
  run_s = max(clock) + 1.0
  acc = ledger.account(run_s, window_s=window, max_points=max_points, power_budget_w=budget)
  for a in acc.instances:                            # (1) busy by phase + idle == run length
    assert a.total_busy_s + a.idle_s == pytest.approx(run_s, rel=1e-12, abs=1e-12)
    assert a.idle_s >= 0
  # (2) requests carry all busy energy and busy cost
  req_j = acc.requests.energy_j.sum()
  assert req_j == pytest.approx(acc.energy_j - acc.idle_energy_j, rel=1e-9, abs=1e-9)
  assert acc.requests.cost_usd.sum() == pytest.approx(acc.cost_usd - acc.idle_cost_usd,
                                                      rel=1e-9, abs=1e-12)
  assert acc.cost_usd == pytest.approx(run_s / 3600 * sum(r.usd_per_hour for r in rates))
  # Power over time integrates to the energy; peak >= any window mean >= average.
  p = acc.power
  spans = [min(run_s, (k + 1) * p.window_s) - k * p.window_s for k in range(len(p.over_time_w))]
  assert len(p.over_time_w) <= max_points
  assert math.fsum(w * s for w, s in zip(p.over_time_w, spans)) == pytest.approx(
      acc.energy_j, rel=1e-9, abs=1e-6)
  assert p.peak_w >= p.peak_window_w * (1 - 1e-9) - 1e-6
  assert p.peak_window_w >= p.average_w * (1 - 1e-9) - 1e-6
  assert p.peak_w <= p.rated_w * (1 + 1e-9) + 1e-6
  assert 0 <= p.over_budget_s <= run_s * (1 + 1e-12)
  if p.over_budget_s > 0:
    assert p.peak_w > budget


class PhaseModel(LinearModel):
  """tests/sim's LinearModel drawing a different power in each phase."""
  WATTS = {Phase.PREFILL: 600.0, Phase.DECODE: 300.0, Phase.MIXED: 450.0, Phase.IDLE: 100.0}

  def power_w(self, phase):
    return self.WATTS[phase]


def _simulate(specs, policy, mixed, leap):
  cfg = SchedulerConfig(policy=policy, mixed_pool=mixed, borrow_prompt_tokens=200,
                        chunk_token_budget=128, max_preemptions=2)
  insts = make_instances(home_roles(cfg, 2, 2, 4), 4, 2048, 1024)
  coord = Coordinator(insts, make_policies(cfg), max_prompt_tokens=1024)
  transfer = lambda r, src, dst, prefill_s: (0.001 + 1e-6 * r.prompt_tokens, r.prompt_tokens * 8)
  sim = Simulator(coord, {i.name: PhaseModel() for i in insts}, transfer, leap=leap,
                  sample_every_s=0.05)
  ledger = accounting.simulator_ledger(sim, {i.name: 3.6 for i in insts})
  sim.work_observers.append(ledger.observe_works)
  result = sim.run(specs)
  return sim, ledger, result


_requests = st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 900), st.integers(1, 60)),
                     min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(_requests, st.sampled_from(POLICIES))
def test_simulated_runs_conserve_time_energy_and_cost(reqs, policy):
  specs = [RequestSpec(i, a, p, o) for i, (a, p, o) in enumerate(reqs)]
  accounts = {}
  for leap in (False, True):
    sim, ledger, result = _simulate(specs, *policy, leap=leap)
    run_s = result.summary.wall_s
    acc = ledger.account(run_s, result.records, window_s=0.05)
    busy = sim.busy.busy_s()
    for a in acc.instances:
      assert a.total_busy_s + a.idle_s == pytest.approx(run_s, rel=1e-12)
      assert a.busy_s == pytest.approx({k: busy[a.name].get(k, 0.0) for k in KINDS})
    assert acc.requests.energy_j.sum() == pytest.approx(acc.energy_j - acc.idle_energy_j,
                                                        rel=1e-9)
    assert acc.unattributed_energy_j == 0.0
    ran = [r.request_id for r in result.records if r.status == RequestStatus.COMPLETED]
    assert (acc.requests.energy_wh()[np.searchsorted(acc.requests.request_ids, ran)] > 0).all()
    moved = sum(r.transfer_bytes for r in result.records)
    assert sum(a.kv_sent_bytes for a in acc.instances) == moved
    assert sum(a.kv_received_bytes for a in acc.instances) == moved
    accounts[leap] = acc
  # A leap charges each row energy x steps / (rows x steps): the same as stepping.
  stepped, leapt = accounts[False].requests, accounts[True].requests
  assert (stepped.request_ids == leapt.request_ids).all()
  assert leapt.energy_j == pytest.approx(stepped.energy_j, rel=1e-9, abs=1e-12)
  assert leapt.cost_usd == pytest.approx(stepped.cost_usd, rel=1e-9, abs=1e-15)


def _one_request_config(tmp_path, hardware):
  trace = tmp_path / "one.csv"
  trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:00:00.0000000,1000,50\n")
  pool = PoolConfig(1, hardware)
  return SimConfig(model=get_preset("llama2-70b"),
                   cluster=SimClusterConfig(prompt=pool, token=pool, colocated=pool),
                   scheduler=SchedulerConfig(policy=ClusterPolicy.SPLIT),
                   workload=WorkloadConfig(trace=str(trace), duration_s=0.0))


def test_a_built_simulation_is_priced_from_the_catalog(tmp_path):
  sim, specs = build(_one_request_config(tmp_path, "dgx-h100"))
  ledger = accounting.simulator_ledger(sim)
  sim.work_observers.append(ledger.observe_works)
  result = sim.run(specs)
  acc = ledger.account(result.summary.wall_s, result.records)
  (rec,) = result.records
  prompt, token = acc.instances
  h100 = get_hardware("dgx-h100")
  assert prompt.rates == token.rates == InstanceRates(
      h100.machine_power_w, 0.45 * h100.machine_power_w, h100.machine_power_w,
      0.15 * h100.machine_power_w, 38.0)
  # The prefill runs from 0 to the first token; decode steps fill the rest but
  # the KV transfer's exposed seconds.
  assert prompt.busy_s[WorkKind.PREFILL] == pytest.approx(rec.first_token_s)
  assert token.busy_s[WorkKind.DECODE] == pytest.approx(
      rec.last_token_s - rec.first_token_s - rec.transfer_s)
  assert acc.cost_usd == pytest.approx(2 * 38.0 * result.summary.wall_s / 3600)
  assert acc.requests.get(0).energy_wh * 3600 == pytest.approx(
      acc.energy_j - acc.idle_energy_j)
  assert prompt.kv_sent_bytes == token.kv_received_bytes == rec.transfer_bytes > 0


def test_power_caps_bound_rates_and_other_models_need_prices():
  capped = accounting.rates_from_perf(
      RooflineModel(get_preset("llama2-70b"), get_hardware("dgx-h100-pcap")), 38.0)
  assert capped.prefill_w == pytest.approx(0.7 * 10200)       # capped
  assert capped.decode_w == pytest.approx(0.45 * 10200)       # below the cap
  hw, share = accounting.machine_share(
      RooflineModel(get_preset("llama2-70b"), get_hardware("dgx-a100"), tp=4))
  assert (hw.name, share) == ("dgx-a100", 0.5)
  with pytest.raises(TypeError, match="prices"):
    accounting.machine_share(LinearModel())


def test_accounting_does_not_import_jax():
  import subprocess
  import sys
  code = ("import sys\nimport splitjax.accounting\n"
          "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax'))]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
