"""The best split of a budget by climbing, not sweeping (no jax).

Under an ISO_POWER / ISO_COST budget, the layouts of one kind pair that use
the budget maximally form a line: prompt count p up, token count down. The
search assumes (and the sweeps measured, see WORKSPACE "Provisioning") that
the max rate along it is unimodal: it rises while the prompt pool is the
bottleneck and falls once the token pool is. So instead of bisecting every
layout's max rate, :func:`climb_line`

1. resolves a seed layout's max rate on the rate lattice
   (``splitjax.provision_rates``: the highest lattice rate it is feasible at,
   index ``kb``);
2. walks one way from it, asking each neighbour about ``kb`` first: one
   infeasible at ``kb`` is strictly below the best, so by unimodality so is
   everything further that way: the walk stops (one probe); one feasible at
   ``kb`` and at ``kb + 1`` beats it (its max rate is then resolved from
   there, a few probes, and the walk goes on from it); one feasible at ``kb``
   only ties (the walk goes on). Most walks end at the first neighbour, so
   asking ``kb`` first spends one probe there instead of two;
3. walks the other way from the seed the same, unless the best moved away
   from the seed by a strict improvement (then the seed is on the rising side
   and everything beyond it is lower).

Every layout it passes costs one or two probes instead of a bisection, and
layouts past the first strictly lower one cost nothing. The answer is the
sweep's (highest lattice rate; among ties the cheaper, then the label) when
the max rate is unimodal along the line; ties (layouts in the best's lattice
cell) are all visited, since the cell's layouts are contiguous.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from splitjax.provision_layout import Layout
from splitjax.provision_probe import Probe
from splitjax.provision_rates import LayoutRates, RateLattice


@dataclasses.dataclass(frozen=True)
class Hint:
  """Where a climb starts: the line's layout with the prompt (or co-located) count nearest
  ``prompt_machines``, its max rate resolved from ``rate`` (req/s, e.g. the
  answer of a similar search; 0: cold)."""
  prompt_machines: int
  rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class ClimbSettings:
  """How rates are resolved: the lattice, and a cold start's first rate
  (req/s per machine) and bracketing factor."""
  lattice: RateLattice
  start_rate_per_machine: float = 1.0
  growth: float = 2.0


def climb_line(line: Sequence[Layout], probe: Probe, settings: ClimbSettings,
               hint: Hint | None = None,
               rates: dict[Layout, LayoutRates] | None = None) -> dict[Layout, LayoutRates]:
  """Every layout of ``line`` (ordered by prompt count) the climb probed, with
  what is known of it (see the module docstring). ``rates``: layouts already
  known (extended in place and returned). Feasibility is judged on the rate
  lattice; the best is :func:`best_on_line`'s choice."""
  rates = {} if rates is None else rates
  if not line:
    return rates
  lat = settings.lattice
  get = lambda i: rates.setdefault(line[i], LayoutRates(line[i], probe, lat))
  seed = len(line) // 2
  first = None
  if hint is not None:
    seed = min(range(len(line)), key=lambda i: (abs(line[i].pools[0].machines
                                                    - hint.prompt_machines), i))
    first = lat.below(hint.rate) if hint.rate > 0 else None
  _resolve(get(seed), first, settings)
  best = seed
  for direction in (+1, -1):
    if direction == -1 and best != seed:
      break              # a strict improvement upwards: the seed was on the rising side
    i = seed + direction
    while 0 <= i < len(line):
      kb, here = get(best).lo, get(i)
      if not here.feasible_at(kb):
        break            # strictly below the best: so is everything further (unimodal)
      if here.feasible_at(kb + 1):
        _resolve(here, kb + 1, settings)
        best = i
      i += direction
  return rates


def _resolve(r: LayoutRates, hint: int | None, settings: ClimbSettings) -> None:
  r.resolve(hint, settings.growth, settings.start_rate_per_machine)


def best_on_line(rates: dict[Layout, LayoutRates],
                 measure: Callable[[Layout], float]) -> Layout | None:
  """The layout with the highest resolved lattice rate (ties: the lower
  ``measure``, then the label); None if none meets any rate."""
  ok = [r for r in rates.values() if r.resolved and r.lo >= r.lattice.low]
  if not ok:
    return None
  return max(ok, key=lambda r: (r.lo, -measure(r.layout), r.layout.label)).layout


def refine_line(best: Layout, line: Sequence[Layout], probe: Probe, settings: ClimbSettings,
                rates: dict[Layout, LayoutRates]) -> dict[Layout, LayoutRates]:
  """Climbs ``line`` (a finer line around ``best``, which it must contain)
  from ``best``, whose rate is known in ``rates``."""
  known = rates[best]
  hint = Hint(best.prompt.machines, settings.lattice.rate(known.lo))
  return climb_line(line, probe, settings, hint, rates)
