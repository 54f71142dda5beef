"""The reproduction's checks beyond the searches (no jax): a layout's max rate
with longer probes (:func:`length_check`), Splitwise-HH on a (prompt, token)
grid for the heat maps (:func:`hh_sweep`), HHcap on the paper's fixed split
(:func:`fixed_split_hhcap`). Rates are resolved on the searches' rate lattice
(``splitjax.provision_rates``), so probes the searches ran are cache hits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from splitjax.paper import (H100, H100_CAP, HHCAP_PAPER_SPLIT, FixedSplitCheck, LengthCheck,
                            PaperDesign, RunSettings, Trace, base_sim, paper_budget)
from splitjax.provision import (Bisection, BudgetKind, CachedProbe, Layout, Pool, SimProbe,
                                at_rate, prices)
from splitjax.provision_probe import Probe
from splitjax.provision_rates import LayoutRates, RateLattice


def _lattice_rate(probe, layout: Layout, settings: RunSettings, hint: float = 0.0) -> float:
  """``layout``'s max rate (req/s) on the searches' rate lattice, from ``hint``."""
  lattice = RateLattice.of(Bisection(tolerance=settings.tolerance))
  rates = LayoutRates(layout, probe, lattice)
  return rates.resolve(lattice.below(hint) if hint > 0 else None).bracket().lower


def _cached(probe, settings: RunSettings):
  return CachedProbe(probe, Path(settings.cache_dir)) if settings.cache_dir else probe


def length_check(trace: Trace, design: PaperDesign, layout: Layout, duration_s: float,
                 settings: RunSettings, hint: float = 0.0) -> LengthCheck:
  """``layout``'s max rate with ``duration_s``-second probes, resolved on the
  searches' lattice from ``hint`` req/s (cached like the searches)."""
  probe = _cached(SimProbe.create(base_sim(trace, design), settings.probe(trace, duration_s)),
                  settings)
  return LengthCheck(trace, design, layout, duration_s,
                     _lattice_rate(probe, layout, settings, hint))


def hh_sweep(trace: Trace, counts: Sequence[int], settings: RunSettings,
             known: Mapping[tuple[int, int], float] = {}) -> list[LengthCheck]:
  """Splitwise-HH max rates on the (prompt, token) grid ``counts`` x ``counts``
  (:func:`sweep_grid`, on the searches' lattice and cache). ``known``:
  (prompt, token) -> a lattice max rate from a search with the same probes."""
  probe = _cached(SimProbe.create(base_sim(trace, PaperDesign.SPLITWISE_HH),
                                  settings.probe(trace)), settings)
  lattice = RateLattice.of(Bisection(tolerance=settings.tolerance))
  return [LengthCheck(trace, PaperDesign.SPLITWISE_HH, r.layout, settings.duration_s(trace),
                      r.bracket().lower)
          for r in sweep_grid(probe, counts, H100, lattice, known)]


def sweep_grid(probe: Probe, counts: Sequence[int], kind: str, lattice: RateLattice,
               known: Mapping[tuple[int, int], float] = {}) -> list[LayoutRates]:
  """Every (prompt, token) layout of ``kind`` on the grid ``counts`` x ``counts``
  resolved on ``lattice``, row by row (prompt count, then token count). A cell
  in ``known`` ((prompt, token) -> a lattice rate, req/s) costs nothing.
  Monotonicity in machines bounds any other by the resolved cells (those
  before it, and any in ``known``, on the grid or not): it serves at least
  what one with no more machines in either pool serves, and misses where one
  with no fewer machines in either pool misses; its probes start from
  :func:`_sweep_guess` (else from that floor) and gallop from there."""
  cells: dict[tuple[int, int], LayoutRates] = {}
  for (p, k), rate in known.items():
    r = cells[(p, k)] = LayoutRates(Layout(Pool(p, kind), Pool(k, kind)), probe, lattice)
    r.lo = lattice.below(rate) if rate > 0 else lattice.low - 1
    r.hi = r.lo + 1
  out = []
  for i, p in enumerate(counts):
    for j, k in enumerate(counts):
      r = cells.setdefault((p, k), LayoutRates(Layout(Pool(p, kind), Pool(k, kind)), probe,
                                               lattice))
      if not r.resolved:
        r.lo = max([r.lo] + [c.lo for (a, b), c in cells.items()
                             if a <= p and b <= k and c.resolved and c is not r])
        r.hi = min([r.hi] + [c.hi for (a, b), c in cells.items()
                             if a >= p and b >= k and c.resolved and c.hi > r.lo])
        guess = _sweep_guess(cells, counts, i, j, lattice, r.lo >= lattice.low)
        guess = min(guess, r.hi - 1) if guess is not None else None
        start = guess if guess is not None and guess > r.lo else r.lo
        r.resolve(start if start >= lattice.low else None, start_rate_per_machine=1.0)
      out.append(r)
  return out


def _sweep_guess(cells: Mapping[tuple[int, int], LayoutRates], counts: Sequence[int],
                 i: int, j: int, lattice: RateLattice, floor: bool) -> int | None:
  """A guess of cell (``counts[i]``, ``counts[j]``)'s lattice index from
  resolved cells (None: none fits): the three cells before it in its row and
  column (it adds to its left neighbour what its upper neighbour added to
  theirs), else the two before it in its row or column (adding half the last
  step: rates grow ever more slowly with machines); without a
  ``floor`` (no neighbour one step fewer resolved), a resolved cell with no
  fewer machines in either pool, scaled down by the machine count."""
  at = lambda a, b: (cells[(counts[a], counts[b])].lo if a >= 0 and b >= 0 and
                     (c := cells.get((counts[a], counts[b]))) and c.resolved else None)
  if None not in (x := (at(i - 1, j), at(i, j - 1), at(i - 1, j - 1))):
    return x[0] + x[1] - x[2]
  if None not in (x := (at(i, j - 1), at(i, j - 2))):
    return x[0] + (x[0] - x[1] + 1) // 2
  if None not in (x := (at(i - 1, j), at(i - 2, j))):
    return x[0] + (x[0] - x[1] + 1) // 2
  if floor:
    return None
  p, k = counts[i], counts[j]
  big = [((a + b) / (p + k), c.lo) for (a, b), c in cells.items()
         if a >= p and b >= k and (a, b) != (p, k) and c.resolved and c.lo >= lattice.low]
  if big:
    scale, lo = min(big)
    return lo - lattice.steps(scale)
  return None


def fixed_split_hhcap(trace: Trace, rate: float, settings: RunSettings) -> FixedSplitCheck:
  """HHcap's least power at ``rate`` with its split held at the paper's 25 : 21
  (our search picks any split): the smallest of its scales 0.1, 0.2, ... 1.5
  that meets the rate, by bisection (each scale's layout has no fewer machines
  in either pool than the one before, so feasibility only grows with scale)."""
  probe = _cached(SimProbe.create(base_sim(trace, PaperDesign.SPLITWISE_HHCAP),
                                  settings.probe(trace)), settings)
  prompt, token = HHCAP_PAPER_SPLIT
  baseline = paper_budget(BudgetKind.ISO_POWER, settings.budget_scale).power_w
  counts = list(dict.fromkeys(
      (max(1, round(prompt * t / 10 * settings.budget_scale)),
       max(1, round(token * t / 10 * settings.budget_scale))) for t in range(1, 16)))
  lo, hi = -1, len(counts)             # counts[lo] misses the rate (or none), counts[hi] meets it
  while hi - lo > 1:
    mid = (lo + hi) // 2
    layout = Layout(Pool(counts[mid][0], H100), Pool(counts[mid][1], H100_CAP))
    lo, hi = (lo, mid) if at_rate(layout, probe, rate).lower > 0 else (mid, hi)
  if hi == len(counts):
    return FixedSplitCheck(trace, rate, None, math.nan, baseline)
  layout = Layout(Pool(counts[hi][0], H100), Pool(counts[hi][1], H100_CAP))
  power = layout.price(prices((H100, H100_CAP))).power_w
  return FixedSplitCheck(trace, rate, layout, power, baseline)
