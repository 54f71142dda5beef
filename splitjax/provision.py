"""Cluster provisioning: which machines to buy for a workload under the SLOs (no jax).

A ``Layout`` (``splitjax.provision_layout``: pools, prices, budgets, candidate
sets) is a cluster of a prompt and a token pool, or one co-located pool, priced
on the paper's basis by ``machine_price``: $/h from the catalog and GPU power
(devices x rated W x power-cap fraction, so 70 DGX-A100 = 40 DGX-H100).

:func:`max_rate` finds the highest Poisson rate (req/s) a layout serves with all
nine SLOs met and no request failed or rejected: bracketing (x ``growth``), then
geometric bisection to a relative tolerance. It assumes feasibility is monotone
in rate (if a rate is served, every lower rate is), and the search that a
layout with fewer machines of the same kinds serves no more. A :class:`SimProbe`
makes the first nearly exact: probes of ~N requests at different rates replay
the same requests (one seed, same draws) with arrival times scaled by 1 / rate.
Probes are deterministic, so a re-run asks for the same probes and the cache
(``CachedProbe``, a file per probe keyed by a hash of all it reads) answers them.

:func:`search` under a ``Budget``:

- ISO_POWER / ISO_COST: only layouts using the budget maximally (no machine of
  either pool could be added), prompt counts on a grid of ``step``, each kind
  pair; the best is the highest max rate, optionally refined at
  ``refine_step`` within one grid step of the best prompt count. Strategy
  SWEEP bisects every layout's max rate; CLIMB (``provision_climb``) climbs
  each kind pair's line, assuming the max rate unimodal along it, with rates
  on one lattice (``provision_rates``), from ``hints`` when given.
- ISO_THROUGHPUT: the cheapest (or lowest-power) layout feasible at the
  required rate, one probe per layout, found per kind pair by a staircase search
  over the (prompt, token) grid (:class:`_Staircase`): it never probes a layout
  dominated by an infeasible one (same kinds, no more machines in any pool) or
  dominating a feasible one, nor one costing as much as the cheapest feasible
  so far. Then, with ``refine_step``, the same search on the finer grid over
  the whole range, bounded by the coarse winner (``local_refine``: only prompt
  counts within one grid step of each kind pair's coarse winner, or of a
  feasible ``start`` guess, the coarse grid then skipped).

Layouts (SWEEP, ISO_THROUGHPUT) or kind pairs (CLIMB) are evaluated in parallel
processes (``workers``, ``provision_runner``), a progress line each. Results:
``provision_results``; the staircase: ``provision_staircase``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

from splitjax.provision_climb import ClimbSettings, Hint, best_on_line, climb_line, refine_line
from splitjax.provision_layout import (Budget, BudgetKind, Design, Layout, Objective, Pool,
                                       Price, ProvisionError, SearchSpace, Strategy,
                                       budget_layouts, budget_line, fill_up, machine_price,
                                       prices)
from splitjax.provision_probe import (CachedProbe, Probe, ProbeOutcome, ProbeSettings, SimProbe,
                                      probe_config)
from splitjax.provision_rates import LayoutRates, RateLattice
from splitjax.provision_results import EvalMode, LayoutResult, RateBracket, SearchResult
from splitjax.provision_runner import Runner
from splitjax.provision_staircase import cheapest_by_pair, implied, walk
from splitjax.serve_config import ClusterPolicy
from splitjax.sim.sim_config import SimConfig

__all__ = ("Bisection", "Budget", "BudgetKind", "CachedProbe", "Design", "EvalMode", "Hint",
           "Layout", "LayoutResult", "Objective", "Pool", "Price", "ProbeOutcome",
           "ProbeSettings", "ProvisionConfig", "ProvisionError", "RateBracket", "SearchResult",
           "SearchSpace", "SimProbe", "Strategy", "at_rate", "budget_layouts", "machine_price",
           "max_rate", "prices", "probe_config", "provision_config_dict", "search")


@dataclasses.dataclass(frozen=True)
class Bisection:
  """How :func:`max_rate` brackets and bisects (rates in req/s)."""
  tolerance: float = 0.025             # stop when upper / lower <= 1 + tolerance
  start_rate_per_machine: float = 1.0  # first probe: this x the layout's machines
  growth: float = 2.0                  # bracketing factor
  min_rate: float = 0.25               # not even this: the layout meets no rate
  max_rate: float = 1e5                # a layout still feasible here stops growing

  def __post_init__(self):
    if not (self.tolerance > 0 and self.growth > 1 and 0 < self.min_rate < self.max_rate
            and self.start_rate_per_machine > 0):
      raise ProvisionError("bisection: need tolerance > 0, growth > 1, "
                           "0 < min_rate < max_rate, start_rate_per_machine > 0")


def max_rate(layout: Layout, probe: Probe, bisection: Bisection = Bisection(),
             feasible_at: float = 0.0) -> RateBracket:
  """Highest rate (req/s) at which ``probe`` finds ``layout`` feasible, to
  ``bisection.tolerance`` (assumes feasibility falls monotonically with rate).
  ``feasible_at`` > 0: a rate already known feasible, where bracketing starts.

  Outcomes implied by monotonicity (below a feasible rate, above an infeasible
  one) are not probed again. From ``feasible_at`` (e.g. an iso-throughput
  winner's required rate, often its max too), the lowest rate the bisection
  would ask if every probe failed is probed first: if it fails, so would every
  rate the bisection asks, and the bracket is known after that one probe (the
  same bracket as probing them in turn)."""
  known = _MonotoneProbe(layout, probe)
  if feasible_at > 0.0:
    asked: list[float] = []

    def failing(rate: float) -> bool:
      asked.append(rate)
      return False
    _bisect(failing, bisection, layout, feasible_at)
    if asked:
      known(min(asked))
  lo, hi = _bisect(known, bisection, layout, feasible_at)
  return RateBracket(lo, hi, tuple(known.probes))


class _MonotoneProbe:
  """``probe`` on one layout as ``feasible(rate)``, answering from monotonicity
  in rate what its probes so far imply (``probes``: those it ran)."""

  def __init__(self, layout: Layout, probe: Probe):
    self.layout, self.probe = layout, probe
    self.probes: list[ProbeOutcome] = []
    self.feasible_to, self.infeasible_from = 0.0, math.inf

  def __call__(self, rate: float) -> bool:
    if rate <= self.feasible_to or rate >= self.infeasible_from:
      return rate <= self.feasible_to
    out = self.probe(self.layout, rate)
    self.probes.append(out)
    if out.feasible:
      self.feasible_to = rate
    else:
      self.infeasible_from = rate
    return out.feasible


def _bisect(feasible: Callable[[float], bool], b: Bisection, layout: Layout,
            lo: float) -> tuple[float, float]:
  """:func:`max_rate`'s (lower, upper) bracket, asking ``feasible(rate)``:
  bracketing from ``lo`` (known feasible, 0: none) or the start rate by
  ``b.growth``, then geometric bisection."""
  hi = math.inf
  rate = min(max(b.start_rate_per_machine * layout.machines, b.min_rate), b.max_rate)
  if lo > 0.0:
    if lo >= b.max_rate:
      return lo, hi
    rate = min(lo * b.growth, b.max_rate)
  while lo == 0.0 or hi == math.inf:
    if feasible(rate):
      lo = rate
      if hi == math.inf and rate >= b.max_rate:
        return lo, hi
    else:
      hi = rate
      if lo == 0.0 and rate <= b.min_rate:
        return lo, hi
    rate = min(lo * b.growth, b.max_rate) if hi == math.inf else max(hi / b.growth, b.min_rate)
  while hi > lo * (1.0 + b.tolerance):
    mid = math.sqrt(lo * hi)
    lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
  return lo, hi


def at_rate(layout: Layout, probe: Probe, rate: float) -> RateBracket:
  """One probe at ``rate`` (req/s)."""
  out = probe(layout, rate)
  return RateBracket(rate if out.feasible else 0.0, math.inf if out.feasible else rate, (out,))


# ---------------------------------------------------------------- evaluation


def _evaluate(probe: Probe, layout: Layout, mode: EvalMode, rate: float,
              bisection: Bisection) -> RateBracket:
  """``rate``: the required rate (AT_RATE) or one known feasible (MAX_RATE, 0: none)."""
  return (max_rate(layout, probe, bisection, rate) if mode == EvalMode.MAX_RATE
          else at_rate(layout, probe, rate))


def _row(layout: Layout, price: Mapping[str, Price], mode: EvalMode,
         bracket: RateBracket) -> LayoutResult:
  return LayoutResult(layout, layout.price(price), mode, bracket)


def _evaluate_all(layouts: Sequence[Layout], mode: EvalMode, rate: float,
                  price: Mapping[str, Price], run: Runner,
                  bisection: Bisection) -> list[LayoutResult]:
  """Every layout's bracket (all submitted at once), in the order given."""
  run.total = run.done + len(layouts) if mode == EvalMode.MAX_RATE else 0
  futures = {run.call(_evaluate, lay, mode, rate, bisection): lay for lay in layouts}
  done = {}
  for f in cf.as_completed(futures):
    bracket, seconds = f.result()
    row = done[futures[f]] = _row(futures[f], price, mode, bracket)
    what = (f"max {row.max_rate:.1f} req/s" if mode == EvalMode.MAX_RATE else
            f"{'meets' if row.feasible else 'misses'} {bracket.probes[0].rate:g} req/s")
    run.report(f"{row.layout.label}: {what} ({len(bracket.probes)} probes, "
               f"{'cached' if seconds is None else f'{seconds:.1f} s'})")
  return [done[lay] for lay in layouts]


# ---------------------------------------------------------------- climbing


def _climb_task(probe: Probe, line: Sequence[Layout], settings: ClimbSettings,
                hint: Hint | None, best: Layout | None = None,
                known: Mapping[Layout, tuple[int, int]] = {}) -> dict[Layout, LayoutRates]:
  """One line climbed, or refined around ``best`` given the lattice brackets
  ``known`` (layout -> (lo, hi)); runs in a worker process. Returns the
  layouts it looked at, with the probes it ran."""
  if best is None:
    return climb_line(line, probe, settings, hint)
  rates = {}
  for lay, (lo, hi) in known.items():
    rates[lay] = LayoutRates(lay, probe, settings.lattice)
    rates[lay].lo, rates[lay].hi = lo, hi
  return refine_line(best, line, probe, settings, rates)


def _report(run: Runner, rates: Mapping[Layout, LayoutRates], seconds: float | None,
            what: str) -> None:
  top = max(rates.values(), key=lambda r: r.lo, default=None)
  best = (f"{top.layout.label} at {top.bracket().lower:.1f} req/s" if top and top.resolved
          else "none")
  run.report(f"{what}: best {best} ({len(rates)} layouts, "
             f"{sum(len(r.probes) for r in rates.values())} probes, "
             f"{'cached' if seconds is None else f'{seconds:.1f} s'})")


def _climb(design: Design, space: SearchSpace, budget: Budget, price: Mapping[str, Price],
           run: Runner, bisection: Bisection,
           hints: Mapping[tuple[str, str | None], Hint]) -> list[LayoutResult]:
  """ISO_POWER / ISO_COST by climbing (module docstring): one task per kind pair
  (co-located: per kind), then one refining around the best."""
  settings = ClimbSettings(RateLattice.of(bisection), bisection.start_rate_per_machine,
                           bisection.growth)
  if design == Design.COLOCATED:
    lines = {(lay.colocated.kind, None): [lay]
             for lay in budget_layouts(design, space, budget, price)}
  else:
    budget_layouts(design, space, budget, price)        # ProvisionError if nothing fits
    lines = {(pk, tk): budget_line(budget, price, pk, tk, space.step)
             for pk, tk in itertools.product(space.prompt_kinds, space.token_kinds)}
  refine = bool(space.refine_step) and design == Design.SPLIT
  run.total = len(lines) + refine
  futures = {k: run.call(_climb_task, line, settings, hints.get(k)) for k, line in lines.items()}
  rates: dict[Layout, LayoutRates] = {}
  for k, f in futures.items():
    found, seconds = f.result()
    rates.update(found)
    _report(run, found, seconds, " + ".join(x for x in k if x))
  best = best_on_line(rates, lambda lay: budget.measure(lay.price(price)))
  if best is not None and refine:
    fine = budget_line(budget, price, best.prompt.kind, best.token.kind, space.refine_step,
                       around=best.prompt.machines, within=space.step)
    fine = sorted(set(fine) | {best}, key=lambda lay: lay.prompt.machines)
    known = {lay: (rates[lay].lo, rates[lay].hi) for lay in fine if lay in rates}
    found, seconds = run.call(_climb_task, fine, settings, None, best, known).result()
    for lay, r in found.items():
      if lay in rates:                     # keep the probes both passes ran
        r.probes[:0] = rates[lay].probes
      rates[lay] = r
    _report(run, found, seconds, f"refined around {best.label}")
  return [_row(lay, price, EvalMode.MAX_RATE if r.resolved else EvalMode.BOUNDS, r.bracket())
          for lay, r in rates.items()]


# ---------------------------------------------------------------- search


def _refined(best: Layout, evaluated: set[Layout], space: SearchSpace, budget: Budget,
             price: Mapping[str, Price]) -> list[Layout]:
  """Budgets, split designs: prompt counts at ``space.refine_step`` within one
  grid step of ``best``'s, each filled up (:func:`fill_up`)."""
  r, s = space.refine_step, space.step
  if not r or best.design == Design.COLOCATED:
    return []
  p, t = best.prompt, best.token
  out = [fill_up(budget, price, Pool(n, p.kind), t.kind)
         for n in range(p.machines - s + r, p.machines + s, r) if n >= 1]
  return [lay for lay in dict.fromkeys(out) if lay and lay not in evaluated]


def _guesses(start: Sequence[Layout], known: dict[Layout, LayoutResult],
             at: Callable[[Sequence[Layout]], list[LayoutResult]], budget: Budget,
             price: Mapping[str, Price]) -> None:
  """ISO_THROUGHPUT: the ``start`` layouts into ``known``, one at a time in
  order: one whose feasibility the outcomes so far imply (it dominates a
  feasible one or is dominated by an infeasible one) is not probed (its row
  says the same as a probe would, with no probes)."""
  for lay in start:
    feasible = implied(known, lay)
    if feasible is None:
      known[lay] = at([lay])[0]
    else:
      rate = budget.rate
      known[lay] = _row(lay, price, EvalMode.AT_RATE, RateBracket(
          rate if feasible else 0.0, math.inf if feasible else rate, ()))


def _best(rows: Sequence[LayoutResult], budget: Budget) -> LayoutResult | None:
  ok = [r for r in rows if r.feasible]
  if not ok:
    return None
  if budget.kind == BudgetKind.ISO_THROUGHPUT:
    return min(ok, key=lambda r: (budget.measure(r.price), r.layout.machines, r.layout.label))
  return max(ok, key=lambda r: (r.max_rate, -budget.measure(r.price), r.layout.label))


def search(design: Design, space: SearchSpace, budget: Budget, probe: Probe, *,
           bisection: Bisection = Bisection(), workers: int | None = None,
           cache_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
           measure_winner: bool = True,
           hints: Mapping[tuple[str, str | None], Hint] | None = None,
           start: Sequence[Layout] = ()) -> SearchResult:
  """The best layout of ``design`` under ``budget`` (see the module docstring).

  ``probe(layout, rate)`` judges one rate (e.g. :class:`SimProbe`); ``workers``
  processes (default ``os.cpu_count()``; 1 runs inline); ``cache_dir`` keeps
  every probe's outcome; ``progress`` gets a line per finished layout (per
  kind pair when climbing); ``measure_winner`` (ISO_THROUGHPUT) bisects the
  winner's max rate too; ``hints`` ((prompt kind, token kind or None) ->
  :class:`Hint`): where CLIMB starts per kind pair (ignored otherwise);
  ``start`` (ISO_THROUGHPUT): layouts probed first, in order, e.g. a guess of
  the answer and a larger one: a feasible one bounds the walk at once (and a
  later guess dominating it is not probed), an infeasible one rules out every
  layout it dominates (the answer is the same, with fewer probes); with
  ``space.local_refine`` and a feasible guess for every kind pair, the coarse
  grid is skipped and the finer one walked near the cheapest feasible guess.
  Raises ProvisionError (budget too small, unknown machine kind, empty space)
  before any probe runs.
  """
  price = prices(space.kinds(design))
  workers = workers or os.cpu_count() or 1
  with Runner(probe, workers, cache_dir, progress) as run:
    if budget.kind == BudgetKind.ISO_THROUGHPUT:
      known: dict[Layout, LayoutResult] = {}
      at = lambda lays: _evaluate_all(lays, EvalMode.AT_RATE, budget.rate, price, run,
                                      bisection)
      _guesses(list(dict.fromkeys(start)), known, at, budget, price)
      pairs = (set(itertools.product(space.prompt_kinds, space.token_kinds))
               if design == Design.SPLIT else {None})
      near = cheapest_by_pair(known, budget) if space.local_refine else {}
      if not (space.refine_step and pairs <= set(near)):     # no feasible guess for some pair
        walk(design, space, space.step, budget, price, at, known)
        near = cheapest_by_pair(known, budget) if space.local_refine else None
      if space.refine_step:
        walk(design, space, space.refine_step, budget, price, at, known, near, space.step)
      rows = list(known.values())
    elif space.strategy == Strategy.CLIMB:
      rows = _climb(design, space, budget, price, run, bisection, hints or {})
    else:
      candidates = budget_layouts(design, space, budget, price)
      rows = _evaluate_all(candidates, EvalMode.MAX_RATE, 0.0, price, run, bisection)
      best = _best(rows, budget)
      if best:
        rows += _evaluate_all(_refined(best.layout, set(candidates), space, budget, price),
                              EvalMode.MAX_RATE, 0.0, price, run, bisection)
    best = _best(rows, budget)
    if best and measure_winner and best.mode == EvalMode.AT_RATE:
      exact = _evaluate_all([best.layout], EvalMode.MAX_RATE, budget.rate, price, run,
                            bisection)[0]
      exact = dataclasses.replace(exact, rates=dataclasses.replace(
          exact.rates, probes=best.rates.probes + exact.rates.probes))
      rows = [exact if r is best else r for r in rows]
      best = exact
  rows.sort(key=lambda r: ([p.kind for p in r.layout.pools], [p.machines for p in r.layout.pools]))
  return SearchResult(design, budget, tuple(rows), best)


@dataclasses.dataclass(frozen=True)
class ProvisionConfig:
  """Everything ``scripts/provision.py`` needs: ``sim`` is the base simulation
  (model, scheduler, workload trace window, SLOs; its pools are replaced by each
  layout, its scheduler policy sets the design), probed per :class:`ProbeSettings`."""
  sim: SimConfig
  budget: Budget
  space: SearchSpace = SearchSpace()
  bisection: Bisection = Bisection()
  probe: ProbeSettings = ProbeSettings()
  measure_winner: bool = True     # ISO_THROUGHPUT: bisect the winner's max rate too

  @property
  def design(self) -> Design:
    return Design.SPLIT if self.sim.scheduler.policy == ClusterPolicy.SPLIT else Design.COLOCATED


def provision_config_dict(sim, budget: Budget, space: SearchSpace = SearchSpace(),
                          bisection: Bisection = Bisection(),
                          probe: ProbeSettings = ProbeSettings()):
  """The ml_collections ConfigDict of ``configs/provision/*.py``: ``sim`` a base
  simulation ConfigDict (``sim_config.design_config_dict``), the rest as given."""
  import ml_collections

  from splitjax.config_defaults import section
  c = ml_collections.ConfigDict()
  c.sim = sim
  c.budget, c.space = section(budget), section(space)
  c.bisection, c.probe = section(bisection), section(probe)
  c.measure_winner = True       # ISO_THROUGHPUT: bisect the winner's max rate too
  return c
