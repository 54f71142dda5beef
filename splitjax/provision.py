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
  pair; every one gets its max rate; the best is the highest, optionally
  refined at ``refine_step`` within one grid step of the best prompt count.
- ISO_THROUGHPUT: the cheapest (or lowest-power) layout feasible at the
  required rate, one probe per layout, found per kind pair by a staircase search
  over the (prompt, token) grid (:class:`_Staircase`): it never probes a layout
  dominated by an infeasible one (same kinds, no more machines in any pool) or
  dominating a feasible one, nor one costing as much as the cheapest feasible
  so far. Then, with ``refine_step``, the same search on the finer grid over
  the whole range, bounded by the coarse winner.

Layouts are evaluated in parallel processes (``workers``), a progress line each.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import itertools
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from splitjax.config import to_plain_dict
from splitjax.provision_layout import (Budget, BudgetKind, CachedProbe, CacheMiss, Design,
                                       Layout, Objective, Pool, Price, Probe, ProbeOutcome,
                                       ProbeSettings, ProvisionError, SearchSpace, SimProbe,
                                       budget_layouts, fill_up, machine_price, prices,
                                       probe_config)
from splitjax.serve_config import ClusterPolicy
from splitjax.sim.sim_config import SimConfig

__all__ = ("Bisection", "Budget", "BudgetKind", "CachedProbe", "Design", "EvalMode", "Layout",
           "LayoutResult", "Objective", "Pool", "Price", "ProbeOutcome", "ProbeSettings",
           "ProvisionConfig", "ProvisionError", "RateBracket", "SearchResult", "SearchSpace",
           "SimProbe", "at_rate", "budget_layouts", "machine_price", "max_rate", "prices",
           "probe_config", "provision_config_dict", "search")


class EvalMode(enum.Enum):
  MAX_RATE = "max_rate"   # bracketed and bisected
  AT_RATE = "at_rate"     # one probe at a required rate


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


@dataclasses.dataclass(frozen=True)
class RateBracket:
  """``lower``: highest rate probed feasible (0: none); ``upper``: lowest probed
  infeasible (inf: none); req/s."""
  lower: float
  upper: float
  probes: tuple[ProbeOutcome, ...]


def max_rate(layout: Layout, probe: Probe, bisection: Bisection = Bisection(),
             feasible_at: float = 0.0) -> RateBracket:
  """Highest rate (req/s) at which ``probe`` finds ``layout`` feasible, to
  ``bisection.tolerance`` (assumes feasibility falls monotonically with rate).
  ``feasible_at`` > 0: a rate already known feasible, where bracketing starts."""
  b, probes = bisection, []

  def feasible(rate: float) -> bool:
    probes.append(probe(layout, rate))
    return probes[-1].feasible

  lo, hi = feasible_at, math.inf
  rate = min(max(b.start_rate_per_machine * layout.machines, b.min_rate), b.max_rate)
  if lo > 0.0:
    if lo >= b.max_rate:
      return RateBracket(lo, hi, ())
    rate = min(lo * b.growth, b.max_rate)
  while lo == 0.0 or hi == math.inf:
    if feasible(rate):
      lo = rate
      if hi == math.inf and rate >= b.max_rate:
        return RateBracket(lo, hi, tuple(probes))
    else:
      hi = rate
      if lo == 0.0 and rate <= b.min_rate:
        return RateBracket(lo, hi, tuple(probes))
    rate = min(lo * b.growth, b.max_rate) if hi == math.inf else max(hi / b.growth, b.min_rate)
  while hi > lo * (1.0 + b.tolerance):
    mid = math.sqrt(lo * hi)
    lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
  return RateBracket(lo, hi, tuple(probes))


def at_rate(layout: Layout, probe: Probe, rate: float) -> RateBracket:
  """One probe at ``rate`` (req/s)."""
  out = probe(layout, rate)
  return RateBracket(rate if out.feasible else 0.0, math.inf if out.feasible else rate, (out,))


# ---------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class LayoutResult:
  """One evaluated layout: its price and rate bracket (``mode`` says whether
  the bracket was bisected or is one probe at a required rate)."""
  layout: Layout
  price: Price
  mode: EvalMode
  rates: RateBracket

  @property
  def max_rate(self) -> float:
    """Highest rate known to meet the SLOs, req/s (0: none)."""
    return self.rates.lower

  @property
  def feasible(self) -> bool:
    return self.rates.lower > 0

  @property
  def rate_per_cost(self) -> float:
    """req/s per $/h (NaN for an unpriced layout)."""
    cost = self.price.cost_per_hour_usd
    return self.max_rate / cost if cost else math.nan

  @property
  def rate_per_kw(self) -> float:
    """req/s per kW (NaN for a layout without power)."""
    return self.max_rate / (self.price.power_w / 1e3) if self.price.power_w else math.nan

  def to_dict(self) -> dict:
    finite = lambda x: x if math.isfinite(x) else None
    return {"layout": self.layout.to_dict(), "label": self.layout.label,
            "cost_per_hour_usd": self.price.cost_per_hour_usd, "power_w": self.price.power_w,
            "mode": self.mode.value, "max_rate": self.max_rate,
            "infeasible_rate": finite(self.rates.upper),
            "rate_per_cost": finite(self.rate_per_cost), "rate_per_kw": finite(self.rate_per_kw),
            "probes": [p.to_dict() for p in self.rates.probes]}


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """``rows``: every evaluated layout (sorted by kinds, then counts); ``best``:
  the winner (None: no layout met the SLOs, at the required rate for
  ISO_THROUGHPUT)."""
  design: Design
  budget: Budget
  rows: tuple[LayoutResult, ...]
  best: LayoutResult | None

  @property
  def probes(self) -> int:
    return sum(len(r.rates.probes) for r in self.rows)

  def to_dict(self) -> dict:
    return {"design": self.design.value, "budget": to_plain_dict(self.budget),
            "best": self.best.to_dict() if self.best else None,
            "probes": self.probes, "rows": [r.to_dict() for r in self.rows]}


# ---------------------------------------------------------------- evaluation


def _evaluate(layout: Layout, mode: EvalMode, rate: float, probe: Probe,
              bisection: Bisection) -> tuple[RateBracket, float]:
  """(bracket, seconds); runs in a worker process. ``rate``: the required rate
  (AT_RATE) or one known feasible (MAX_RATE, 0: none)."""
  t0 = time.perf_counter()
  bracket = (max_rate(layout, probe, bisection, rate) if mode == EvalMode.MAX_RATE
             else at_rate(layout, probe, rate))
  return bracket, time.perf_counter() - t0


class _InlineExecutor:
  """``submit`` runs the call at once (one worker: no processes)."""

  def submit(self, fn, *args) -> cf.Future:
    future = cf.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:     # delivered by future.result(), as a pool would
      future.set_exception(e)
    return future

  def shutdown(self, wait: bool = True) -> None:
    del wait


class _Runner:
  """Evaluates layouts: from the cache when every probe is there, else in a
  worker process (or inline with one worker); reports each finished one."""

  def __init__(self, probe: Probe, bisection: Bisection, workers: int,
               cache_dir: Path | None, progress: Callable[[str], None] | None):
    self.probe = CachedProbe(probe, Path(cache_dir)) if cache_dir else probe
    self.bisection, self.workers, self.progress = bisection, workers, progress
    self.done, self.total = 0, 0     # total: layouts of this max-rate pass (0: not known)
    self._executor = None

  def __enter__(self) -> _Runner:
    return self

  def __exit__(self, *exc) -> None:
    if self._executor is not None:
      self._executor.shutdown(wait=True)

  def submit(self, layout: Layout, mode: EvalMode, rate: float = 0.0) -> cf.Future:
    if isinstance(self.probe, CachedProbe):
      offline = dataclasses.replace(self.probe, offline=True)
      try:
        bracket, _ = _evaluate(layout, mode, rate, offline, self.bisection)
        return _InlineExecutor().submit(lambda: (bracket, None))
      except CacheMiss:
        pass
    if self._executor is None:
      # Fresh interpreters ("spawn"), not fork: a forked copy of a process that
      # runs threads (e.g. one that imported jax) can deadlock.
      self._executor = (_InlineExecutor() if self.workers <= 1 else cf.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context("spawn")))
    return self._executor.submit(_evaluate, layout, mode, rate, self.probe, self.bisection)

  def collect(self, future: cf.Future, layout: Layout, mode: EvalMode,
              price: Mapping[str, Price]) -> LayoutResult:
    bracket, seconds = future.result()
    row = LayoutResult(layout, layout.price(price), mode, bracket)
    self.done += 1
    if self.progress:
      took = "cached" if seconds is None else f"{seconds:.1f} s"
      what = (f"max {row.max_rate:.1f} req/s" if mode == EvalMode.MAX_RATE else
              f"{'meets' if row.feasible else 'misses'} {bracket.probes[0].rate:g} req/s")
      count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
      self.progress(f"[{count}] {layout.label}: {what} "
                    f"({len(bracket.probes)} probes, {took})")
    return row


def _max_rates(layouts: Sequence[Layout], price: Mapping[str, Price], run: _Runner,
               feasible_at: float = 0.0) -> list[LayoutResult]:
  """Every layout's max rate (all submitted at once)."""
  run.total = run.done + len(layouts)
  futures = {run.submit(lay, EvalMode.MAX_RATE, feasible_at): lay for lay in layouts}
  return [run.collect(f, futures[f], EvalMode.MAX_RATE, price) for f in cf.as_completed(futures)]


class _Staircase:
  """The cheapest feasible layout of one kind (pair) on a grid of ``counts``,
  under the monotonicity assumption. Split: column by column (prompt counts
  upwards), the fewest feasible token machines, searched only below the last
  column's (more prompt machines never need more token machines): galloping
  down from there (1, 2, 4 ... grid steps) until infeasible, then bisecting. So
  no layout dominated by an infeasible one (or dominating a feasible one) is
  probed, and a layout costing ``bound`` or more is never probed (it is as good
  as feasible: nothing dearer can win). Co-located: one column of counts."""

  def __init__(self, prompt_kind: str, token_kind: str | None, counts: Sequence[int]):
    self.kinds, self.counts = (prompt_kind, token_kind), list(counts)
    self.columns = self.counts if token_kind else [0]
    self.i, self.j, self.top, self.low, self.gap = 0, 0, len(self.counts), -1, 1
    self.pending: Layout | None = None     # returned by next(), awaiting update()

  def _layout(self, j: int) -> Layout:
    pk, tk = self.kinds
    if tk is None:
      return Layout(colocated=Pool(self.counts[j], pk))
    return Layout(Pool(self.columns[self.i], pk), Pool(self.counts[j], tk))

  def next(self, budget: Budget, price: Mapping[str, Price], bound: float) -> Layout | None:
    """The layout to probe next (None: done). Token counts of index >= ``top``
    are known feasible or too dear, <= ``low`` infeasible (this column)."""
    if self.pending is not None:
      return self.pending
    while self.i < len(self.columns):
      while self.top > 0 and budget.measure(self._layout(self.top - 1).price(price)) >= bound:
        self.top -= 1
      if self.top - self.low > 1:
        self.j = ((self.low + self.top) // 2 if self.low >= 0
                  else max(self.top - self.gap, 0))
        self.pending = self._layout(self.j)
        return self.pending
      self.i, self.low, self.gap = self.i + 1, -1, 1
    return None

  def update(self, feasible: bool) -> None:
    """The outcome of the layout :meth:`next` returned."""
    self.pending = None
    if feasible:
      self.top, self.gap = self.j, self.gap * 2
    else:
      self.low = self.j


def _walk(design: Design, space: SearchSpace, step: int, budget: Budget,
          price: Mapping[str, Price], run: _Runner, known: dict[Layout, LayoutResult]) -> None:
  """One :class:`_Staircase` per kind (pair) on the grid of ``step``, advanced in
  rounds: each round probes every walk's next layout at once (in parallel), so
  what is probed does not depend on timing or workers. ``known`` (layout ->
  result) is extended; what it holds or implies (:func:`_implied`) is not
  probed again, and its cheapest feasible layout bounds the walks."""
  counts = range(step, space.max_machines + 1, step)
  pairs = (itertools.product(space.prompt_kinds, space.token_kinds) if design == Design.SPLIT
           else ((k, None) for k in space.colocated_kinds))
  walks = [_Staircase(pk, tk, counts) for pk, tk in pairs]
  run.total = 0
  while True:
    asks = []
    for w in walks:
      while (lay := w.next(budget, price, _bound(known, budget))) is not None:
        feasible = _implied(known, lay)
        if feasible is None:
          break
        w.update(feasible)
      if lay is not None and lay not in asks:
        asks.append(lay)
    if not asks:
      return
    futures = [(run.submit(lay, EvalMode.AT_RATE, budget.rate), lay) for lay in asks]
    for f, lay in futures:
      known[lay] = run.collect(f, lay, EvalMode.AT_RATE, price)


def _implied(known: Mapping[Layout, LayoutResult], layout: Layout) -> bool | None:
  """Feasibility of ``layout`` known or implied by monotonicity in machines: it is
  infeasible if dominated by an infeasible layout, feasible if it dominates a
  feasible one (None: unknown)."""
  if layout in known:
    return known[layout].feasible
  for r in known.values():
    if (layout.dominated_by(r.layout) and not r.feasible or
        r.layout.dominated_by(layout) and r.feasible):
      return r.feasible
  return None


def _bound(known: Mapping[Layout, LayoutResult], budget: Budget) -> float:
  """The cheapest feasible layout's cost or power (inf: none yet)."""
  return min((budget.measure(r.price) for r in known.values() if r.feasible), default=math.inf)


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
           measure_winner: bool = True) -> SearchResult:
  """The best layout of ``design`` under ``budget`` (see the module docstring).

  ``probe(layout, rate)`` judges one rate (e.g. :class:`SimProbe`); ``workers``
  processes (default ``os.cpu_count()``; 1 runs inline); ``cache_dir`` keeps
  every probe's outcome; ``progress`` gets a line per finished layout;
  ``measure_winner`` (ISO_THROUGHPUT) bisects the winner's max rate too.
  Raises ProvisionError (budget too small, unknown machine kind, empty space)
  before any probe runs.
  """
  price = prices(space.kinds(design))
  workers = workers or os.cpu_count() or 1
  with _Runner(probe, bisection, workers, cache_dir, progress) as run:
    if budget.kind == BudgetKind.ISO_THROUGHPUT:
      known: dict[Layout, LayoutResult] = {}
      for step in (space.step, space.refine_step):
        if step:
          _walk(design, space, step, budget, price, run, known)
      rows = list(known.values())
    else:
      candidates = budget_layouts(design, space, budget, price)
      rows = _max_rates(candidates, price, run)
      best = _best(rows, budget)
      if best:
        rows += _max_rates(_refined(best.layout, set(candidates), space, budget, price),
                           price, run)
    best = _best(rows, budget)
    if best and measure_winner and best.mode == EvalMode.AT_RATE:
      exact = _max_rates([best.layout], price, run, budget.rate)[0]
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
