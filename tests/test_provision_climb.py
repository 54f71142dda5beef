"""Rates on a lattice (splitjax.provision_rates) and the climb over a budget's
line of splits (splitjax.provision_climb) against exhaustive answers."""

import math

import pytest

from splitjax.provision import Bisection
from splitjax.provision_climb import ClimbSettings, Hint, best_on_line, climb_line
from splitjax.provision_layout import Layout, Pool
from splitjax.provision_probe import ProbeOutcome
from splitjax.provision_rates import LayoutRates, RateLattice

H = "dgx-h100"
LATTICE = RateLattice.of(Bisection(tolerance=0.05))


def _probe(surface):
  calls = []

  def probe(layout, rate):
    calls.append((layout, rate))
    return ProbeOutcome(rate, rate <= surface(layout), 1)
  probe.calls = calls
  return probe


@pytest.mark.parametrize("true_rate", [0.3, 7.7, 99.3, 512.0])
@pytest.mark.parametrize("hint", [None, 0.5, 90.0, 2000.0])
def test_a_layouts_rate_is_the_same_lattice_point_from_any_start(true_rate, hint):
  lay = Layout(colocated=Pool(40, H))
  probe = _probe(lambda layout: true_rate)
  r = LayoutRates(lay, probe, LATTICE).resolve(None if hint is None else LATTICE.below(hint))
  b = r.bracket()
  assert r.resolved and b.lower <= true_rate < b.upper
  assert b.upper == pytest.approx(b.lower * 1.05)
  assert b.lower == LATTICE.rate(LATTICE.below(true_rate))
  assert all(math.isclose(math.log(c[1], 1.05), round(math.log(c[1], 1.05)))
             for c in probe.calls)                     # only lattice rates are probed


def test_a_close_hint_costs_few_probes_and_the_lattice_ends_hold():
  lay = Layout(colocated=Pool(40, H))
  probe = _probe(lambda layout: 100.0)
  LayoutRates(lay, probe, LATTICE).resolve(LATTICE.below(100.0))
  assert len(probe.calls) == 2                          # the hint, then one step up
  never = LayoutRates(lay, _probe(lambda layout: 0.0), LATTICE).resolve()
  assert never.bracket().lower == 0.0 and never.bracket().upper == LATTICE.rate(LATTICE.low)
  always = LayoutRates(lay, _probe(lambda layout: 1e9), LATTICE).resolve()
  assert always.bracket().upper == math.inf


def _line(n):
  return [Layout(Pool(p, H), Pool(n + 1 - p, H)) for p in range(1, n + 1)]


@pytest.mark.parametrize("peak", [1, 7, 13, 20])
@pytest.mark.parametrize("hint", [None, 1, 20])
def test_the_climb_finds_the_sweeps_best_on_unimodal_lines_with_plateaus(peak, hint):
  n = 20
  # rising to the peak then falling, with flat stretches inside one lattice cell
  shape = lambda p: 100.0 * (1.0 + 0.06 * min(p, peak) // 3 * 3) / (1.0 + 0.08 * max(0, p - peak))
  surface = lambda layout: shape(layout.prompt.machines)
  line = _line(n)
  settings = ClimbSettings(LATTICE)
  probe = _probe(surface)
  rates = climb_line(line, probe, settings, Hint(hint, 0.0) if hint else None)
  measure = lambda lay: lay.prompt.machines            # ties: the fewer prompt machines
  every = {lay: LayoutRates(lay, _probe(surface), LATTICE).resolve() for lay in line}
  assert best_on_line(rates, measure) == best_on_line(every, measure)
  assert len(probe.calls) < sum(len(r.probes) for r in every.values()) / 2


def test_a_walk_ends_after_one_probe_at_each_lower_neighbour():
  n, peak = 9, 5
  surface = lambda layout: 100.0 / 1.2 ** abs(layout.prompt.machines - peak)
  line = _line(n)
  probe = _probe(surface)
  kb = LATTICE.below(100.0)
  rates = climb_line(line, probe, ClimbSettings(LATTICE), Hint(peak, LATTICE.rate(kb)))
  assert best_on_line(rates, lambda lay: lay.prompt.machines) == line[peak - 1]
  # the seed: its lattice rate, then one step up; each neighbour: only the best's rate
  assert [(c[0].prompt.machines, round(math.log(c[1], 1.05))) for c in probe.calls] == [
      (peak, kb), (peak, kb + 1), (peak + 1, kb), (peak - 1, kb)]


@pytest.mark.parametrize("below,above", [(5, None), (None, 5), (5, 5), (12, 3)])
@pytest.mark.parametrize("off", [-4, -1, 0, 1, 2, 7])
def test_a_hint_inside_known_bounds_is_probed_first_and_the_answer_is_the_same(below, above,
                                                                             off):
  lay = Layout(colocated=Pool(40, H))
  k = LATTICE.below(99.3)
  probe = _probe(lambda layout: 99.3)
  r = LayoutRates(lay, probe, LATTICE)
  if below is not None:
    r.lo = k - below
  if above is not None:
    r.hi = k + 1 + above
  lo, hi = r.lo, r.hi
  r.resolve(k + off)
  assert r.bracket().lower == LATTICE.rate(k) and r.resolved
  steps = [round(math.log(c[1], 1.05)) for c in probe.calls]
  assert all(lo < s < hi for s in steps) and len(steps) == len(set(steps))
  if lo < k + off < hi:
    assert steps[0] == k + off
