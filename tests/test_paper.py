"""Paper reproduction (splitjax.paper, paper_claims, paper_plots) on hand-made search
outcomes: budgets, the modeling variants' configs, every claim's arithmetic,
the report and the figures. No simulation."""

import dataclasses
import json
import math

import pytest

from splitjax import paper as P
from splitjax import paper_claims as C
from splitjax import paper_plots as pp
from splitjax.config import TransferMode
from splitjax.provision import BudgetKind, Layout, Pool, prices

S = P.RunSettings()
H, A, CAP = P.H100, P.A100, P.H100_CAP
# Hand-made iso-power winners per trace: (layout, max req/s).
WINNERS = {
    P.PaperDesign.BASELINE_A100: (Layout(colocated=Pool(70, A)), 50.0),
    P.PaperDesign.BASELINE_H100: (Layout(colocated=Pool(40, H)), 100.0),
    P.PaperDesign.SPLITWISE_AA: (Layout(Pool(40, A), Pool(30, A)), 110.0),   # 2.2x A100
    P.PaperDesign.SPLITWISE_HH: (Layout(Pool(25, H), Pool(15, H)), 150.0),
    P.PaperDesign.SPLITWISE_HA: (Layout(Pool(20, H), Pool(35, A)), 130.0),
    P.PaperDesign.SPLITWISE_HHCAP: (Layout(Pool(25, H), Pool(21, CAP)), 145.0),
}


def _point(layout, rate):
  price = layout.price(prices({p.kind for p in layout.pools}))
  return P.LayoutPoint(layout, rate, price.cost_per_hour_usd, price.power_w)


def _outcomes(scale_code=1.0):
  """Iso-power winners on both traces (split designs' rates x scale_code on code)."""
  out = {}
  for trace, scale in ((P.Trace.CONV, 1.0), (P.Trace.CODE, scale_code)):
    for d, (lay, rate) in WINNERS.items():
      spec = P.budget_spec(trace, d, BudgetKind.ISO_POWER, S)
      rate *= scale if d.split else 1.0
      out[spec] = P.SearchOutcome(spec, _point(lay, rate), (_point(lay, rate),))
    base = out[P.budget_spec(trace, P.PaperDesign.BASELINE_H100, BudgetKind.ISO_POWER, S)]
    cap = P.hhcap_spec(trace, base.best.max_rate)
    out[cap] = P.SearchOutcome(cap, _point(Layout(Pool(20, H), Pool(15, CAP)), 101.0))
  code = P.code_cost_spec(S)
  out[code] = P.SearchOutcome(code, _point(Layout(Pool(13, H), Pool(2, H)), 71.5))
  return out


def _claim(claims, key):
  return next(c for c in claims if c.key == key)


def test_paper_budgets_are_40_h100_of_gpu_power_and_cost():
  assert P.paper_budget(BudgetKind.ISO_POWER).power_w == pytest.approx(40 * 8 * 700)
  assert P.paper_budget(BudgetKind.ISO_COST).cost_per_hour_usd == pytest.approx(40 * 38.0)
  assert P.paper_budget(BudgetKind.ISO_POWER, 0.1).power_w == pytest.approx(22400)


def test_variants_change_only_what_they_name():
  ours = P.base_sim(P.Trace.CONV, P.PaperDesign.SPLITWISE_HH)
  serial = P.base_sim(P.Trace.CONV, P.PaperDesign.SPLITWISE_HH, P.Variant.SERIAL_TRANSFER)
  no_gqa = P.base_sim(P.Trace.CONV, P.PaperDesign.SPLITWISE_HH, P.Variant.NO_GQA_KV)
  assert serial.cluster.transfer == TransferMode.SERIALIZED and ours.model == serial.model
  assert no_gqa.model.kv_bytes_per_token() == 8 * ours.model.kv_bytes_per_token()
  # Weights (hence KV room) unchanged to within 0.01%.
  assert no_gqa.model.param_count() == pytest.approx(ours.model.param_count(), rel=1e-4)
  assert no_gqa.cluster == ours.cluster and ours.workload.trace == "conv"


def test_claims_from_hand_made_outcomes():
  claims = C.compute_claims(_outcomes(scale_code=0.5), S)
  assert [c.key for c in claims] == list(C.ClaimKey)
  # AA costs 70 x 17.6 = 1232 $/h = 0.81 x 1520: the only design in the 20%-cheaper class
  # (HA: 20 x 38 + 35 x 17.6 = 1376 $/h = 0.91x); its 110 / 100 on conv beats 55 / 100 on code.
  c1 = _claim(claims, C.ClaimKey.THROUGHPUT_AT_LOWER_COST)
  assert c1.our_value == pytest.approx(1.1) and "conv Splitwise-AA" in c1.basis
  assert c1.ratio == pytest.approx(1.1 / 1.4)
  c2 = _claim(claims, C.ClaimKey.SAME_COST_AND_POWER)
  assert c2.our_value == pytest.approx(2.2) and abs(c2.ratio - 1) < 0.2
  c3 = _claim(claims, C.ClaimKey.HHCAP_LOWER_POWER)      # 20 x 5.6 + 15 x 3.92 = 170.8 kW
  assert c3.our_value == pytest.approx(170.8 / 224.0)
  c4 = _claim(claims, C.ClaimKey.CODE_COST_OPTIMAL)
  assert c4.our_value == pytest.approx(15 * 38.0) and c4.our_label == "13 dgx-h100 + 2 dgx-h100"
  assert c4.ratio is None and not c4.deviates(0.2)
  assert c1.deviates(0.2) and not c2.deviates(0.2)


def test_deviating_claims_are_rerun_on_the_trace_their_value_comes_from():
  from splitjax import paper_plan as PL
  outcomes = _outcomes(scale_code=0.5)
  claims = C.compute_claims(outcomes, S)
  low_cost = _claim(claims, C.ClaimKey.THROUGHPUT_AT_LOWER_COST)   # 1.1 on conv, 0.55 on code
  assert low_cost.traces == (P.Trace.CONV,) and low_cost.to_dict()["traces"] == ["conv"]
  assert _claim(claims, C.ClaimKey.CODE_COST_OPTIMAL).traces == (P.Trace.CODE,)
  assert C.ClaimKey.HHCAP_LOWER_POWER.lowest_over_traces
  assert not C.ClaimKey.THROUGHPUT_AT_LOWER_COST.lowest_over_traces
  plan = PL.Plan(S, PL.Extras(beyond=False, sweep=False, check_duration_s=-1),
                 PL.Checks(S, PL.Extras(), None), lambda _: None)
  more = plan.more(outcomes, list(outcomes))
  assert plan.off == [C.ClaimKey.THROUGHPUT_AT_LOWER_COST]
  reruns = [x for x in more if isinstance(x, P.SearchSpec) and x.variant != P.Variant.OURS]
  assert {x.trace for x in reruns} == {P.Trace.CONV}
  assert {(x.design, x.variant) for x in reruns} == {
      (d, v) for v in P.Variant if v != P.Variant.OURS
      for d in (P.PaperDesign.BASELINE_H100, P.PaperDesign.SPLITWISE_AA,
                P.PaperDesign.SPLITWISE_HA)}
  # Under a switch, the claim is computed from the rerun trace alone.
  for x in reruns:
    mine = outcomes[dataclasses.replace(x, variant=P.Variant.OURS)]
    outcomes[x] = dataclasses.replace(mine, spec=x)
  again = _claim(C.compute_claims(outcomes, S, P.Variant.SERIAL_TRANSFER),
                 C.ClaimKey.THROUGHPUT_AT_LOWER_COST)
  assert again.our_value == pytest.approx(1.1) and again.traces == (P.Trace.CONV,)
  md = pp.render_report(claims, {P.Variant.SERIAL_TRANSFER: (again,)}, outcomes, S, [])
  assert "1.4x throughput at 20% lower cost (conv; lower bound)" in md


def test_missing_searches_leave_claims_empty_and_deps_are_listed():
  claims = C.compute_claims({}, S)
  assert all(c.our_value is None for c in claims)
  assert "not run" in _claim(claims, C.ClaimKey.CODE_COST_OPTIMAL).detail
  deps = C.claim_specs(C.ClaimKey.SAME_COST_AND_POWER, S, P.Variant.NO_GQA_KV)
  assert {(s.trace, s.design) for s in deps} == {
      (t, d) for t in S.traces for d in (P.PaperDesign.BASELINE_A100, P.PaperDesign.SPLITWISE_AA)}
  assert all(s.variant == P.Variant.NO_GQA_KV for s in deps)
  assert len(C.hhcap_specs(_outcomes(), S)) == 2
  assert [s.trace for s in C.hhcap_specs(_outcomes(), S, traces=[P.Trace.CODE])] == [
      P.Trace.CODE]
  assert {s.trace for s in C.claim_specs(C.ClaimKey.SAME_COST_AND_POWER, S,
                                          P.Variant.NO_GQA_KV, [P.Trace.CONV])} == {P.Trace.CONV}


def test_report_has_every_claim_and_the_reruns_of_deviating_ones(tmp_path):
  outcomes = _outcomes(scale_code=0.5)
  claims = C.compute_claims(outcomes, S)
  reruns = {v: C.compute_claims(outcomes, S) for v in P.Variant if v != P.Variant.OURS}
  md = pp.render_report(claims, reruns, outcomes, S, ["a.png"])
  for key in C.ClaimKey:
    assert key.text in md
  table = md.split("## Claims")[1].split("##")[0]
  assert table.count("\n|") == 2 + len(C.ClaimKey)
  reruns_part = md.split("## Where")[1].split("##")[0]
  assert C.ClaimKey.THROUGHPUT_AT_LOWER_COST.text in reruns_part
  assert C.ClaimKey.SAME_COST_AND_POWER.text not in reruns_part
  assert "KV sized without GQA" in reruns_part and "![a.png](a.png)" in md
  json.dumps([c.to_dict() for c in claims])        # results.json entries serialize


def test_figures_are_written(tmp_path):
  pytest.importorskip("matplotlib", reason="figures need the 'report' extra (matplotlib)")
  outcomes = _outcomes()
  sweep = [P.LengthCheck(P.Trace.CONV, P.PaperDesign.SPLITWISE_HH, Layout(Pool(p, H), Pool(t, H)),
                         60.0, 10.0 * p + t) for p in (10, 20) for t in (10, 20)]
  paths = [pp.plot_throughput_vs(outcomes, S, "cost", tmp_path / "c.png"),
           pp.plot_hh_heatmap(outcomes, P.Trace.CONV, tmp_path / "h.png", sweep)]
  lat = pp.Latencies(P.PaperDesign.SPLITWISE_HH, WINNERS[P.PaperDesign.SPLITWISE_HH][0], 5.0,
                     (0.1, 0.2, 0.3), (0.03, 0.04))
  paths.append(pp.plot_latency_cdfs([lat], P.Trace.CONV, tmp_path / "l.png"))
  for p in paths:
    assert p.read_bytes()[:4] == b"\x89PNG"
  assert pp.plot_hh_heatmap({}, P.Trace.CODE, tmp_path / "none.png", sweep) is None
  assert P.QUICK.min_duration_s == 60.0 and P.QUICK.probe(P.Trace.CONV).window.start == 0.25
  assert P.QUICK.duration_s(P.Trace.CODE) == 60.0
  assert (S.probe(P.Trace.CODE).min_duration_s, S.probe(P.Trace.CONV).min_duration_s) == (
      60.0, 120.0)
  assert S.probe(P.Trace.CODE, 240.0).min_duration_s == 240.0
  assert P.QUICK.tunings == (P.Tuning.DEFAULT,)


def test_probe_length_section_compares_ratios_across_lengths():
  d = P.PaperDesign
  rates = {(d.BASELINE_A100, 60.0): 80.0, (d.BASELINE_A100, 120.0): 60.0,
           (d.SPLITWISE_AA, 60.0): 160.0, (d.SPLITWISE_AA, 120.0): 90.0}
  checks = [P.LengthCheck(P.Trace.CONV, x, WINNERS[x][0], n, r) for (x, n), r in rates.items()]
  checks += [P.LengthCheck(P.Trace.CODE, x, WINNERS[x][0], 2 * n, r) for (x, n), r in
             rates.items()]
  outcomes = _outcomes(scale_code=0.5)
  claims = C.compute_claims(outcomes, S)
  md = pp.render_report(claims, {}, outcomes, S, [], checks=checks)
  part = md.split("## Probe length")[1].split("##")[0]
  assert part.count("| Splitwise-AA / Baseline-A100 | ratio | 2.00 | 1.50 |") == 2
  assert "conv, 60 s -> 120 s: Splitwise-AA / Baseline-A100 2.00 -> 1.50 (-25%)" in part
  assert "code, 120 s -> 240 s: Splitwise-AA / Baseline-A100 2.00" in part
  assert "n/a (no reruns)" in part and "at least 60 s (code), 120 s (conv)" in part
  assert "max req/s, 60 s probes | max req/s, 120 s probes" in part
  assert "max req/s, 120 s probes | max req/s, 240 s probes" in part.split("code trace:")[1]


def test_the_length_check_runs_on_every_trace_at_twice_its_probes():
  from splitjax import paper_plan as PL
  checks = PL.Checks(S, PL.Extras(), None)
  tasks = checks._tasks("length", _outcomes(), [], None)
  got = {(t[1], t[4]) for t in tasks}
  assert got == {(P.Trace.CODE, 60.0), (P.Trace.CODE, 120.0), (P.Trace.CONV, 120.0),
                 (P.Trace.CONV, 240.0)}
  assert len(tasks) == 2 * 2 * 4                     # 4 winners per trace and length
  fixed = PL.Checks(S, PL.Extras(check_duration_s=120.0), None)
  assert {(t[1], t[4]) for t in fixed._tasks("length", _outcomes(), [], None)} == {
      (P.Trace.CODE, 60.0), (P.Trace.CODE, 120.0)}   # conv already probes 120 s


def test_beyond_claims_compare_splitwise_any_with_the_best_paper_design():
  outcomes = dict(_outcomes())
  for trace, rate in ((P.Trace.CONV, 174.0), (P.Trace.CODE, 160.0)):
    spec = P.budget_spec(trace, P.PaperDesign.SPLITWISE_ANY, BudgetKind.ISO_POWER, S)
    outcomes[spec] = P.SearchOutcome(spec, _point(Layout(Pool(60, A), Pool(5, CAP)), rate))
  claims = C.compute_claims(outcomes, S)
  power = _claim(claims, C.ClaimKey.BEYOND_ISO_POWER)
  # Best of the six: HH at 150 req/s on both traces; the lower of 174 / 150 and 160 / 150.
  assert power.our_value == pytest.approx(160.0 / 150.0)
  assert power.our_label == "60 dgx-a100 + 5 dgx-h100-pcap" and "Splitwise-HH" in power.detail
  assert _claim(claims, C.ClaimKey.BEYOND_ISO_COST).our_value is None       # not searched
  lazy = P.budget_spec(P.Trace.CODE, P.PaperDesign.SPLITWISE_ANY, BudgetKind.ISO_POWER, S,
                       tuning=P.Tuning.LAZY_BORROW)
  outcomes[lazy] = P.SearchOutcome(lazy, _point(Layout(Pool(30, H), Pool(10, H)), 180.0))
  power = _claim(C.compute_claims(outcomes, S), C.ClaimKey.BEYOND_ISO_POWER)
  assert power.our_value == pytest.approx(174.0 / 150.0)        # code now 180 / 150
  assert "30 dgx-h100 + 10 dgx-h100 (lazy_borrow mixed pool)" in power.detail
  base = P.base_sim(P.Trace.CODE, P.PaperDesign.SPLITWISE_ANY, tuning=P.Tuning.LAZY_BORROW)
  assert base.scheduler.borrow_prompt_tokens == P.LAZY_BORROW_PROMPT_TOKENS
  any_space = P.PaperDesign.SPLITWISE_ANY.space(5, refine_step=1)
  assert any_space.prompt_kinds == (H, A) and any_space.token_kinds == (H, A, CAP)
  assert P.PaperDesign.SPLITWISE_ANY not in P.PAPER_DESIGNS and len(P.PAPER_DESIGNS) == 6


def test_the_hhcap_claim_with_the_papers_split_held_fixed():
  hh = lambda p, t: Layout(Pool(p, H), Pool(t, CAP))
  budget = P.paper_budget(BudgetKind.ISO_POWER).power_w
  fixed = [P.FixedSplitCheck(P.Trace.CODE, 99.3, hh(18, 15), 159600.0, budget),
           P.FixedSplitCheck(P.Trace.CONV, 99.3, None, math.nan, budget)]
  assert fixed[0].ratio == pytest.approx(159600.0 / 224000.0)
  outcomes = _outcomes()
  md = pp.render_report(C.compute_claims(outcomes, S), {}, outcomes, S, [], fixed=fixed)
  part = md.split("## Where")[1].split("## Probe")[0]
  assert "split held at the paper's 25 prompt : 21 capped token machines" in part
  assert "0.71x power (lowest over traces)" in part and "18 dgx-h100 + 15 dgx-h100-pcap" in part
  assert "conv: no scale up to 1.5x serves 99.3 req/s" in part


def test_searches_start_from_the_answers_they_depend_on():
  from splitjax import paper_run as R
  outcomes = dict(_outcomes())
  for d, (lay, rate) in WINNERS.items():         # iso-cost searches start from iso-power
    spec = P.budget_spec(P.Trace.CONV, d, BudgetKind.ISO_POWER, S)
    cost = P.budget_spec(P.Trace.CONV, d, BudgetKind.ISO_COST, S)
    assert R.depends_on(cost, S) == [spec] and R.hints_for(cost, outcomes, S)
  aa = P.budget_spec(P.Trace.CONV, P.PaperDesign.SPLITWISE_AA, BudgetKind.ISO_POWER, S)
  hh = P.budget_spec(P.Trace.CONV, P.PaperDesign.SPLITWISE_HH, BudgetKind.ISO_POWER, S)
  assert R.depends_on(aa, S) == [hh]
  # HH 25 + 15 puts 25/40 of the power on prompt machines: 44 of 70 A100 machines
  assert R.hints_for(aa, outcomes, S) == {(A, A): R.Hint(44, 0.0)}
  # Splitwise-any climbs each paper pair exactly as that design's search does
  any_ = P.budget_spec(P.Trace.CONV, P.PaperDesign.SPLITWISE_ANY, BudgetKind.ISO_POWER, S)
  assert set(R.depends_on(any_, S)) >= {aa, hh}
  hints = R.hints_for(any_, outcomes, S)
  assert hints[(A, A)] == R.hints_for(aa, outcomes, S)[(A, A)]
  assert (H, H) not in hints                       # HH at iso-power starts cold
  assert hints[(A, CAP)] == R.Hint(44, 145.0)      # a non-paper pair: from HHcap (its tokens)
  lazy = dataclasses.replace(any_, tuning=P.Tuning.LAZY_BORROW)
  assert R.depends_on(lazy, S) == [any_]
  assert R.priority(lazy) > R.priority(any_) > R.priority(aa)
  assert R.priority(hh) == max(R.priority(s) for s in outcomes)
  serial = dataclasses.replace(aa, variant=P.Variant.SERIAL_TRANSFER)
  assert R.depends_on(serial, S) == [aa] and R.priority(serial) == 0
  assert R.hints_for(serial, outcomes, S) == {(A, A): R.Hint(40, 110.0)}
  # iso-throughput: a guess scaled from the iso-power winner, on the finest grid
  cap = P.hhcap_spec(P.Trace.CONV, 100.0)
  assert R.start_for(cap, outcomes, S) == [Layout(Pool(17, H), Pool(14, CAP)),
                                           Layout(Pool(21, H), Pool(17, CAP))]


@pytest.mark.parametrize("surface", [
    lambda p, k: 2.0 * p + 1.5 * k,                        # both pools add
    lambda p, k: min(5.0 * p, 3.0 * k),                    # one pool binds
    lambda p, k: 60.0 * (p * k) ** 0.3 / (1 + 0.01 * p),   # curved
    lambda p, k: 57.4,                                     # flat
], ids=["additive", "bottleneck", "curved", "flat"])
@pytest.mark.parametrize("known", [{}, {(20, 20): None, (30, 10): None},
                                   {(15, 25): None, (25, 15): None}],
                         ids=["cold", "known", "known-off-grid"])
def test_the_hh_sweep_grid_finds_every_cells_lattice_rate(surface, known):
  from splitjax.paper_checks import sweep_grid
  from splitjax.provision import Bisection, ProbeOutcome
  from splitjax.provision_rates import LayoutRates, RateLattice
  lattice = RateLattice.of(Bisection(tolerance=0.05))
  calls = []

  def probe(layout, rate):
    calls.append((layout, rate))
    return ProbeOutcome(rate, rate <= surface(layout.prompt.machines, layout.token.machines), 1)

  counts = (10, 20, 30, 40)
  truth = {(p, k): LayoutRates(Layout(Pool(p, H), Pool(k, H)), probe, lattice).resolve()
           for p in counts for k in counts}
  brute = len(calls)
  known = {c: LayoutRates(Layout(Pool(c[0], H), Pool(c[1], H)), probe, lattice).resolve()
           .bracket().lower for c in known}
  calls.clear()
  got = sweep_grid(probe, counts, H, lattice, known)
  assert [(r.layout.prompt.machines, r.layout.token.machines) for r in got] == list(truth)
  assert [r.bracket().lower for r in got] == [r.bracket().lower for r in truth.values()]
  assert not {(c[0].prompt.machines, c[0].token.machines) for c in calls} & set(known)
  assert len(calls) < 0.6 * brute          # each cell resolved alone: brute


def test_a_switch_explains_a_gap_only_beyond_the_searches_resolution():
  key = C.ClaimKey.THROUGHPUT_AT_LOWER_COST
  ours = C.Claim(key, 1.71, "", traces=(P.Trace.CODE,))
  near = {P.Variant.SERIAL_TRANSFER: (C.Claim(key, 1.55, ""),),    # 9% closer: one step each
          P.Variant.BATCH_DECODE: (C.Claim(key, 1.98, ""),)}        # farther
  assert S.resolution == pytest.approx(0.1025)
  row = pp.reruns_table([ours], near, 0.2, S.resolution)[-1]
  assert row.endswith("| none beyond the searches' resolution (10%): KV sent serially after "
                      "each prefill 9% |")
  far = {**near, P.Variant.NO_GQA_KV: (C.Claim(key, 1.45, ""),)}   # 15% closer
  row = pp.reruns_table([ours], far, 0.2, S.resolution)[-1]
  assert row.endswith("| KV sized without GQA (8x larger) |")
  assert pp.reruns_table([ours], {P.Variant.BATCH_DECODE: near[P.Variant.BATCH_DECODE]},
                         0.2, S.resolution)[-1].endswith("| none (no switch moves it closer) |")
