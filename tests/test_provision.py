"""Provisioning search (splitjax.provision): prices and budgets, candidate sets,
max rate by bisection, the searches against brute force (a fake probe with a
known max-rate surface, and the simulator on a small instance), the cache, and
clear errors."""

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from splitjax import provision as pv
from splitjax.config import from_config_dict
from splitjax.provision import (Bisection, Budget, BudgetKind, Design, Layout, Objective, Pool,
                                ProbeOutcome, ProvisionError, SearchSpace)
from splitjax.provision_probe import cache_key
from splitjax.sim.hardware import get_hardware
from splitjax.sim.perf_model import default_profile_path
from splitjax.sim.sim_config import PoolConfig, SimConfig, design_config_dict
from splitjax.workload import shared_trace_path

H, A, CAP = "dgx-h100", "dgx-a100", "dgx-h100-pcap"
H100_W = 8 * 700.0
# The fake cluster: req/s each machine adds to its pool (a split layout serves the
# smaller of its pools' sums; a co-located one its machines' sum).
PROMPT_RATE = {H: 3.0, A: 1.3, CAP: 2.2}
TOKEN_RATE = {H: 7.0, A: 3.3, CAP: 5.9}
COLOCATED_RATE = {H: 2.1, A: 0.9}


def true_max(layout: Layout) -> float:
  if layout.colocated:
    return COLOCATED_RATE[layout.colocated.kind] * layout.colocated.machines
  return min(PROMPT_RATE[layout.prompt.kind] * layout.prompt.machines,
             TOKEN_RATE[layout.token.kind] * layout.token.machines)


@dataclasses.dataclass(frozen=True)
class FakeProbe:
  """Feasible exactly up to :func:`true_max`; records its calls (inline runs)."""
  calls: list = dataclasses.field(default_factory=list, compare=False)

  def __call__(self, layout, rate):
    self.calls.append((layout, rate))
    return ProbeOutcome(rate, rate <= true_max(layout), 100, 0, () if rate <= true_max(layout)
                        else ("tbt_p90",))

  def key(self, layout, rate):
    return {"fake": 1, "layout": layout.to_dict(), "rate": rate}


def _prices(*kinds):
  return pv.prices(kinds)


def _all_split(kinds_p, kinds_t, top):
  return [Layout(Pool(p, pk), Pool(t, tk)) for pk, tk in itertools.product(kinds_p, kinds_t)
          for p in range(1, top + 1) for t in range(1, top + 1)]


# ---------------------------------------------------------------- prices and budgets


def test_machine_prices_are_gpu_power_and_catalog_cost():
  price = _prices(H, A, CAP)
  assert price[H] == pv.Price(5600.0, 38.0)
  assert price[A] == pv.Price(3200.0, 17.6)
  assert price[CAP].power_w == pytest.approx(3920.0) and price[CAP].cost_per_hour_usd == 38.0
  hh = Layout(Pool(25, H), Pool(15, H)).price(price)
  assert hh.power_w == pytest.approx(224e3) and hh.cost_per_hour_usd == pytest.approx(1520.0)
  hhcap = Layout(Pool(25, H), Pool(21, CAP)).price(price)
  assert hhcap.power_w == pytest.approx(222.32e3) and hhcap.cost_per_hour_usd == 46 * 38.0
  assert Layout(colocated=Pool(70, A)).price(price).power_w == pytest.approx(224e3)
  assert pv.machine_price(get_hardware(H)) == price[H]


def test_iso_power_and_iso_cost_match_the_papers_machine_counts():
  price = _prices(H, A)
  power = Budget(BudgetKind.ISO_POWER, power_w=40 * H100_W)
  cost = Budget(BudgetKind.ISO_COST, cost_per_hour_usd=40 * 38.0)
  space = SearchSpace(colocated_kinds=(H, A))
  assert [lay.label for lay in pv.budget_layouts(Design.COLOCATED, space, power, price)] == [
      f"40 {H}", f"70 {A}"]
  assert [lay.label for lay in pv.budget_layouts(Design.COLOCATED, space, cost, price)] == [
      f"40 {H}", f"86 {A}"]


def test_iso_power_split_candidates_use_the_budget_maximally():
  price = _prices(H, A, CAP)
  budget = Budget(BudgetKind.ISO_POWER, power_w=40 * H100_W)
  hh = pv.budget_layouts(Design.SPLIT, SearchSpace(), budget, price)
  assert [(lay.prompt.machines, lay.token.machines) for lay in hh] == [
      (p, 40 - p) for p in range(5, 40, 5)]
  space = SearchSpace(prompt_kinds=(H, A), token_kinds=(A, CAP), step=5)
  layouts = pv.budget_layouts(Design.SPLIT, space, budget, price)
  assert Layout(Pool(25, H), Pool(21, CAP)) in layouts        # configs/sim/splitwise_hhcap.py
  assert Layout(Pool(25, H), Pool(26, A)) in layouts          # configs/sim/splitwise_ha.py
  assert len(set(layouts)) == len(layouts)
  for lay in layouts:
    assert lay.price(price).power_w <= budget.power_w + 1e-6
    for pool in ("prompt", "token"):                          # no machine can be added
      p = getattr(lay, pool)
      bigger = dataclasses.replace(lay, **{pool: Pool(p.machines + 1, p.kind)})
      assert bigger.price(price).power_w > budget.power_w + 1e-6


def test_budget_and_space_errors_are_clear():
  price = _prices(H)
  with pytest.raises(ProvisionError, match="too small for any split layout.*needs 33600 W"):
    pv.budget_layouts(Design.SPLIT, SearchSpace(), Budget(power_w=30e3), price)
  with pytest.raises(ProvisionError, match="too small for any colocated layout"):
    pv.budget_layouts(Design.COLOCATED, SearchSpace(),
                      Budget(BudgetKind.ISO_COST, cost_per_hour_usd=10.0), price)
  with pytest.raises(ProvisionError, match="unknown hardware 'dgx-b300'.*known: .*dgx-a100"):
    pv.search(Design.SPLIT, SearchSpace(token_kinds=("dgx-b300",)), Budget(power_w=1e6),
              FakeProbe(), workers=1)
  with pytest.raises(ProvisionError, match="no machine kinds for the split design"):
    pv.search(Design.SPLIT, SearchSpace(prompt_kinds=()), Budget(power_w=1e6), FakeProbe(),
              workers=1)
  with pytest.raises(ProvisionError, match="cpu-host have no cost"):
    pv.search(Design.COLOCATED, SearchSpace(colocated_kinds=("cpu-host",)),
              Budget(BudgetKind.ISO_COST, cost_per_hour_usd=100.0), FakeProbe(), workers=1)
  with pytest.raises(ProvisionError, match="needs budget.rate > 0"):
    Budget(BudgetKind.ISO_THROUGHPUT)
  with pytest.raises(ProvisionError, match="needs budget.power_w > 0"):
    Budget()
  with pytest.raises(ProvisionError, match="prompt and token pools, or a colocated pool"):
    Layout(prompt=Pool(1, H))
  with pytest.raises(ProvisionError, match=">= 1 machine"):
    Layout(Pool(0, H), Pool(1, H))


def test_a_failed_search_input_runs_no_probe():
  probe = FakeProbe()
  with pytest.raises(ProvisionError):
    pv.search(Design.SPLIT, SearchSpace(), Budget(power_w=1.0), probe, workers=1)
  assert probe.calls == []


# ---------------------------------------------------------------- max rate


@pytest.mark.parametrize("machines,per_machine", [(1, 0.4), (2, 3.7), (40, 3.1), (7, 160.0)])
@pytest.mark.parametrize("tolerance", [0.1, 0.025, 0.005])
def test_max_rate_brackets_the_true_rate_within_the_tolerance(machines, per_machine, tolerance):
  surface = machines * per_machine
  probe = lambda layout, rate: ProbeOutcome(rate, rate <= surface, 1)
  b = Bisection(tolerance=tolerance)
  r = pv.max_rate(Layout(colocated=Pool(machines, H)), probe, b)
  assert r.lower <= surface < r.upper <= r.lower * (1 + tolerance)
  # bracketing from machines x 1 req/s by doublings, then halving the log-gap
  start = machines * b.start_rate_per_machine
  bracketing = abs(math.log2(surface / start)) + 2
  assert len(r.probes) <= bracketing + math.log2(math.log(2) / math.log1p(tolerance)) + 1


def test_max_rate_edges():
  never = lambda layout, rate: ProbeOutcome(rate, False, 1)
  always = lambda layout, rate: ProbeOutcome(rate, True, 1)
  failing = lambda layout, rate: ProbeOutcome(rate, True, 10, failed=1)
  lay = Layout(colocated=Pool(4, H))
  b = Bisection(min_rate=0.5, max_rate=100.0)
  r = pv.max_rate(lay, never, b)
  assert r.lower == 0.0 and r.upper == 0.5 and len(r.probes) == 4         # 4, 2, 1, 0.5
  assert pv.max_rate(lay, failing, b).lower == 0.0                      # failures count
  r = pv.max_rate(lay, always, b)
  assert r.lower == 100.0 and r.upper == math.inf
  r = pv.max_rate(lay, lambda layout, rate: ProbeOutcome(rate, rate <= 70.0, 1), b,
                  feasible_at=70.0)
  assert r.lower == 70.0 and 70.0 < r.upper <= 70.0 * 1.025
  assert len(r.probes) == 1 and r.probes[0].rate == r.upper  # the lowest it would ask fails


@pytest.mark.parametrize("true_max", [70.0, 71.0, 74.0, 90.0, 139.0, 141.0, 500.0])
def test_max_rate_from_a_feasible_rate_gives_the_plain_bisections_bracket(true_max):
  lay = Layout(colocated=Pool(4, H))
  b = Bisection(tolerance=0.05, max_rate=1000.0)
  calls = []

  def probe(layout, rate):
    calls.append(rate)
    return ProbeOutcome(rate, rate <= true_max, 1)

  asked = []

  def plain(rate):                          # the bisection, every rate probed in turn
    asked.append(rate)
    return true_max >= rate
  r = pv.max_rate(lay, probe, b, feasible_at=70.0)
  assert (r.lower, r.upper) == pv._bisect(plain, b, lay, 70.0)
  assert len(calls) == len(set(calls)) == len(r.probes) <= len(asked) + 1
  if true_max < 70.0 * 1.04:
    assert len(calls) == 1


def test_bisection_settings_are_checked():
  with pytest.raises(ProvisionError, match="growth > 1"):
    Bisection(growth=1.0)
  with pytest.raises(ProvisionError, match="min_rate < max_rate"):
    Bisection(min_rate=5.0, max_rate=1.0)


# ---------------------------------------------------------------- the searches (fake probe)


@pytest.mark.parametrize("strategy", list(pv.Strategy))
@pytest.mark.parametrize("space", [
    SearchSpace(step=1),
    SearchSpace(step=5, refine_step=1),
    SearchSpace(prompt_kinds=(H, A), token_kinds=(H, A, CAP), step=1),
], ids=["hh-step1", "hh-step5-refine", "mixed-kinds"])
def test_iso_power_search_finds_the_brute_force_optimum(space, strategy):
  space = dataclasses.replace(space, strategy=strategy)
  budget = Budget(BudgetKind.ISO_POWER, power_w=40 * H100_W)
  price = _prices(H, A, CAP)
  fits = [lay for lay in _all_split(space.prompt_kinds, space.token_kinds, 80)
          if lay.price(price).power_w <= budget.power_w + 1e-6]
  best = max(fits, key=true_max)
  assert sorted(true_max(lay) for lay in fits)[-2] < true_max(best) / 1.025   # unique optimum
  result = pv.search(Design.SPLIT, space, budget, FakeProbe(), workers=1)
  assert result.best.layout == best
  assert result.best.max_rate <= true_max(best) < result.best.max_rate * 1.025
  assert result.best is max(result.rows, key=lambda r: r.max_rate)
  if space.step == 5 and strategy == pv.Strategy.SWEEP:   # the grid, then 21..29 around 25
    assert len(result.rows) == 7 + 8
  if strategy == pv.Strategy.CLIMB:       # on the lattice: one bisection's resolution
    lattice = result.best.rates.upper / result.best.max_rate
    assert lattice == pytest.approx(1.025)
    sweep = pv.search(Design.SPLIT, dataclasses.replace(space, strategy=pv.Strategy.SWEEP),
                      budget, FakeProbe(), workers=1)
    assert result.probes < sweep.probes / 2


@pytest.mark.parametrize("rate", [20.0, 70.0, 133.0])
@pytest.mark.parametrize("space,minimize", [
    (SearchSpace(step=1, max_machines=50), Objective.COST),
    (SearchSpace(step=5, max_machines=50, refine_step=1), Objective.COST),
    (SearchSpace(prompt_kinds=(H, A), token_kinds=(A, CAP), step=4, max_machines=48,
                 refine_step=1), Objective.POWER),
], ids=["step1", "step5-refine", "mixed-kinds-power"])
@pytest.mark.parametrize("local", [False, True])
def test_iso_throughput_search_finds_the_brute_force_cheapest(rate, space, minimize, local):
  space = dataclasses.replace(space, local_refine=local)
  budget = Budget(BudgetKind.ISO_THROUGHPUT, rate=rate, minimize=minimize)
  price = _prices(H, A, CAP)
  feasible = [lay for lay in _all_split(space.prompt_kinds, space.token_kinds, 48)
              if true_max(lay) >= rate]
  cheapest = min(budget.measure(lay.price(price)) for lay in feasible)
  probe = FakeProbe()
  result = pv.search(Design.SPLIT, space, budget, probe, workers=1)
  assert budget.measure(result.best.price) == pytest.approx(cheapest)
  assert true_max(result.best.layout) >= rate and result.best.max_rate >= rate
  assert result.best.mode == pv.EvalMode.MAX_RATE          # measured after the search
  at_rate = [c for c in probe.calls if c[1] == rate]
  assert len(at_rate) == len({c[0] for c in at_rate})     # no layout probed twice
  assert len(at_rate) < len(_all_split(space.prompt_kinds, space.token_kinds, 48)) / 10


def test_iso_throughput_colocated_and_unreachable_rates():
  budget = Budget(BudgetKind.ISO_THROUGHPUT, rate=50.0)
  space = SearchSpace(colocated_kinds=(H, A), step=1, max_machines=60)
  result = pv.search(Design.COLOCATED, space, budget, FakeProbe(), workers=1)
  assert result.best.layout == Layout(colocated=Pool(24, H))     # 24 x 2.1 >= 50 > 23 x 2.1
  none = pv.search(Design.COLOCATED, space, Budget(BudgetKind.ISO_THROUGHPUT, rate=1e4),
                   FakeProbe(), workers=1)
  assert none.best is None and all(not r.feasible for r in none.rows)


def test_parallel_workers_give_the_same_result():
  budget = Budget(BudgetKind.ISO_POWER, power_w=40 * H100_W)
  space = SearchSpace(prompt_kinds=(H,), token_kinds=(H, CAP), step=5, refine_step=2)
  inline = pv.search(Design.SPLIT, space, budget, FakeProbe(), workers=1)
  parallel = pv.search(Design.SPLIT, space, budget, FakeProbe(), workers=2)
  assert parallel.to_dict() == inline.to_dict()
  tput = Budget(BudgetKind.ISO_THROUGHPUT, rate=60.0)
  assert (pv.search(Design.SPLIT, space, tput, FakeProbe(), workers=2).to_dict() ==
          pv.search(Design.SPLIT, space, tput, FakeProbe(), workers=1).to_dict())


def test_cache_answers_a_rerun_without_probing(tmp_path):
  budget = Budget(BudgetKind.ISO_POWER, power_w=40 * H100_W)
  lines = []
  first = FakeProbe()
  r1 = pv.search(Design.SPLIT, SearchSpace(), budget, first, workers=1, cache_dir=tmp_path)
  assert first.calls and len(list(tmp_path.glob("*.json"))) == len(first.calls)
  second = FakeProbe()
  r2 = pv.search(Design.SPLIT, SearchSpace(), budget, second, workers=1, cache_dir=tmp_path,
                 progress=lines.append)
  assert second.calls == [] and r2.to_dict() == r1.to_dict()
  assert len(lines) == 7 and all(line.endswith("cached)") for line in lines)
  entry = json.loads(next(tmp_path.glob("*.json")).read_text())
  assert set(entry) == {"layout", "rate", "outcome", "inputs"}
  # A different probe key (e.g. another workload) misses the cache.
  @dataclasses.dataclass(frozen=True)
  class OtherWorkload(FakeProbe):
    def key(self, layout, rate):
      return {**super().key(layout, rate), "trace": "code"}
  other = OtherWorkload()
  pv.search(Design.SPLIT, SearchSpace(), budget, other, workers=1, cache_dir=tmp_path)
  assert len(other.calls) == len(first.calls)


def test_corrupt_cache_entries_are_probed_again(tmp_path):
  lay, probe = Layout(Pool(5, H), Pool(5, H)), FakeProbe()
  cached = pv.CachedProbe(probe, tmp_path)
  cached(lay, 10.0)
  next(tmp_path.glob("*.json")).write_text("{not json")
  assert cached(lay, 10.0).feasible and len(probe.calls) == 2


# ---------------------------------------------------------------- the simulator as the probe


def _tiny_trace(path: Path) -> Path:
  rows = [(s, 200 + 97 * s % 1800, 1 + 13 * s % 300) for s in range(40)]
  path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
      f"2023-11-16 18:{s // 60:02d}:{s % 60:02d}.5000000,{p},{o}\n" for s, p, o in rows))
  return path


def _roofline_base(trace: Path) -> SimConfig:
  c = design_config_dict(prompt=PoolConfig(1, H), token=PoolConfig(1, H))
  c.workload.trace = str(trace)
  c.cluster.perf_model = "roofline"        # no profile files needed
  return from_config_dict(SimConfig, c)


def test_simulator_search_matches_brute_force_on_a_small_cluster(tmp_path):
  """Llama2-70B, roofline, ~200-request probes: every split layout of up to 4
  DGX-H100 by brute force against the iso-power and iso-throughput searches."""
  probe = pv.SimProbe.create(_roofline_base(_tiny_trace(tmp_path / "t.csv")),
                             pv.ProbeSettings(requests=200, min_duration_s=0.0))
  b = Bisection(start_rate_per_machine=2.0)
  cache = tmp_path / "cache"
  cached = pv.CachedProbe(probe, cache)
  every = [lay for lay in _all_split((H,), (H,), 3) if lay.machines <= 4]
  brute = {lay: pv.max_rate(lay, cached, b) for lay in every}
  power = Budget(BudgetKind.ISO_POWER, power_w=4 * H100_W)
  result = pv.search(Design.SPLIT, SearchSpace(step=1), power, probe, bisection=b, workers=1,
                     cache_dir=cache)
  best = max(brute, key=lambda lay: brute[lay].lower)
  assert result.best.layout == best and result.best.max_rate == brute[best].lower > 0
  assert {r.layout for r in result.rows} == {lay for lay in every if lay.machines == 4}
  rate = 0.9 * sorted(r.lower for r in brute.values())[2]       # some 2-3 machine layouts miss
  tput = Budget(BudgetKind.ISO_THROUGHPUT, rate=rate)
  meets = [lay for lay in every if pv.at_rate(lay, cached, rate).lower > 0]
  found = pv.search(Design.SPLIT, SearchSpace(step=1, max_machines=3), tput, probe,
                    bisection=b, workers=1, cache_dir=cache)
  assert found.best.layout.machines == min(lay.machines for lay in meets)
  assert found.best.layout in meets


def test_sim_probe_key_covers_its_inputs(tmp_path):
  trace = _tiny_trace(tmp_path / "t.csv")
  base = _roofline_base(trace)
  whole = dict(min_duration_s=0.0, measure_from=0.0, measure_to=1.0)
  probe = pv.SimProbe.create(base, pv.ProbeSettings(requests=100, **whole))
  lay = Layout(Pool(1, H), Pool(2, H))
  key = probe.key(lay, 5.0)
  assert key["config"]["cluster"]["token"] == {"machines": 2, "hardware": H}
  assert key["config"]["cluster"]["colocated"]["machines"] == 0
  assert key["config"]["workload"]["rate"] == 5.0
  assert key["config"]["workload"]["rate_duration_s"] == 20.0           # 100 requests / 5 req/s
  assert key["measure"] == [0.0, 1.0]
  steady = pv.SimProbe.create(base, pv.ProbeSettings(requests=100, min_duration_s=50.0,
                                                     measure_from=0.25, measure_to=0.75))
  assert steady.key(lay, 5.0)["config"]["workload"]["rate_duration_s"] == 50.0
  assert steady.key(lay, 50.0)["config"]["workload"]["rate_duration_s"] == 50.0
  assert steady.key(lay, 0.5)["config"]["workload"]["rate_duration_s"] == 200.0
  assert steady.key(lay, 5.0)["measure"] == [0.25, 0.75]
  with pytest.raises(ProvisionError, match="measure_from < measure_to"):
    pv.ProbeSettings(requests=100, measure_from=0.5, measure_to=0.5)
  with pytest.raises(ProvisionError, match="min_duration_s must be >= 0"):
    pv.ProbeSettings(min_duration_s=-1.0)
  assert pv.ProbeSettings(requests=0, duration_s=10.0).horizon_s(100.0) == 10.0
  trace.write_text(trace.read_text().replace(",200,", ",201,"))
  changed = pv.SimProbe.create(base, pv.ProbeSettings(requests=100, **whole))
  assert cache_key(changed, lay, 5.0) != cache_key(probe, lay, 5.0)
  with pytest.raises(ProvisionError, match="does not fit scheduler.policy=split"):
    probe(Layout(colocated=Pool(2, H)), 1.0)


def test_probes_at_different_rates_replay_the_same_requests_time_scaled(tmp_path):
  """What makes feasibility (almost exactly) monotone in rate: same sizes, arrivals x 1/rate."""
  from splitjax import workload
  base = _roofline_base(_tiny_trace(tmp_path / "t.csv"))
  lay, settings = Layout(Pool(1, H), Pool(1, H)), pv.ProbeSettings(requests=300,
                                                                   min_duration_s=0.0)
  specs = {}
  for rate in (3.0, 11.0):
    cfg = pv.probe_config(base, lay, rate, settings)
    specs[rate] = workload.build(cfg.workload, cfg.model.max_seq_len)
  slow, fast = specs[3.0], specs[11.0]
  assert len(slow) == len(fast) > 250
  assert [(s.prompt_tokens, s.output_tokens) for s in slow] == [
      (s.prompt_tokens, s.output_tokens) for s in fast]
  assert [s.arrival_s * 3.0 for s in slow] == pytest.approx([s.arrival_s * 11.0 for s in fast])


def test_a_sim_probe_reads_its_trace_once_and_probes_as_a_fresh_one_would(tmp_path,
                                                                           monkeypatch):
  from splitjax import workload
  base = _roofline_base(_tiny_trace(tmp_path / "t.csv"))
  settings = pv.ProbeSettings(requests=200, min_duration_s=0.0)
  lay = Layout(Pool(1, H), Pool(1, H))
  reads = []
  read = workload.read_azure_trace
  monkeypatch.setattr(workload, "read_azure_trace", lambda path: reads.append(path) or read(path))
  probe = pv.SimProbe.create(base, settings)
  kept = [probe(lay, rate) for rate in (2.0, 9.0, 40.0)]
  assert len(reads) == 1
  assert kept == [pv.SimProbe.create(base, settings)(lay, rate) for rate in (2.0, 9.0, 40.0)]
  assert probe == pv.SimProbe.create(base, settings)          # the windows are no input


def test_sim_probe_check_fails_early_on_a_missing_trace(tmp_path):
  probe = pv.SimProbe.create(_roofline_base(_tiny_trace(tmp_path / "t.csv")))
  (tmp_path / "t.csv").unlink()
  with pytest.raises(ValueError, match="t.csv"):
    probe.check([Layout(Pool(1, H), Pool(1, H))])


@pytest.mark.skipif(not (default_profile_path().exists() and shared_trace_path("conv").exists()),
                    reason="needs ../shared/data (profiles and the conversation trace)")
def test_sim_probe_on_the_conversation_trace():
  """Splitwise-HH (25 + 15) with the paper's profiles: 20 req/s is easy, 1000 is not."""
  c = design_config_dict(prompt=PoolConfig(25, H), token=PoolConfig(15, H))
  probe = pv.SimProbe.create(from_config_dict(SimConfig, c), pv.ProbeSettings(requests=1500))
  lay = Layout(Pool(25, H), Pool(15, H))
  probe.check([lay])
  easy, hard = probe(lay, 20.0), probe(lay, 1000.0)
  assert easy.feasible and easy.requests > 1400 and easy.failing == ()
  assert not hard.feasible and hard.failing


def test_provisioning_imports_no_jax():
  code = ("import sys, splitjax.provision, splitjax.sim.build, splitjax.sim.slo; "
          "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')]")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@pytest.mark.parametrize("rate", [20.0, 70.0, 133.0])
def test_iso_throughput_from_a_guess_finds_the_same_cheapest_with_fewer_probes(rate):
  space = SearchSpace(step=5, max_machines=50, refine_step=1, local_refine=True)
  budget = Budget(BudgetKind.ISO_THROUGHPUT, rate=rate)
  plain = pv.search(Design.SPLIT, space, budget, FakeProbe(), workers=1)
  best = plain.best.layout
  guess = [Layout(Pool(best.prompt.machines + 2, H), Pool(best.token.machines + 1, H)),
           Layout(Pool(max(1, best.prompt.machines - 1), H), Pool(best.token.machines, H))]
  probe = FakeProbe()
  found = pv.search(Design.SPLIT, space, budget, probe, workers=1, start=guess)
  assert found.best.layout == best and len(probe.calls) < plain.probes
  assert guess[0] in {r.layout for r in found.rows}


def test_a_guess_implied_by_an_earlier_one_is_not_probed():
  space = SearchSpace(step=5, max_machines=50, refine_step=1, local_refine=True)
  budget = Budget(BudgetKind.ISO_THROUGHPUT, rate=70.0)
  best = pv.search(Design.SPLIT, space, budget, FakeProbe(), workers=1).best.layout
  bigger = Layout(Pool(best.prompt.machines + 3, H), Pool(best.token.machines + 1, H))
  probe = FakeProbe()
  found = pv.search(Design.SPLIT, space, budget, probe, workers=1, start=[best, bigger])
  assert found.best.layout == best
  assert all(c[0] != bigger for c in probe.calls)                  # implied feasible
  row = next(r for r in found.rows if r.layout == bigger)
  assert row.feasible and row.max_rate == 70.0 and row.rates.probes == ()
