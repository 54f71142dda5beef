"""Running the reproduction's searches (``splitjax.paper``) on a few processes (no jax).

Each search (:class:`~splitjax.paper.SearchSpec`) runs inline in one of
``workers`` spawned processes (:class:`Workers`), as soon as the searches it
depends on are done (:func:`run_graph`). A search depends on another when it
starts from that one's answer (:func:`hints_for`, :func:`depends_on`):

- a paper design at iso-cost starts each kind pair's climb from its iso-power
  winner, scaled by how many times that winner fits the iso-cost budget;
- the other paper split designs at iso-power start from Splitwise-HH's share
  of the budget on prompt machines (HHcap also from its rate);
- Splitwise-any (default mixed pool) climbs each kind pair exactly as the
  paper design of that pair does (same hints), so those probes are cache hits:
  it waits for them; its other pairs start from the paper pair with the same
  token kind (same share of the budget on prompt machines, same rate) at
  iso-power, from its own iso-power answer at iso-cost;
- Splitwise-any with lazy borrowing starts each pair from the default's;
- a rerun under another modelling ``Variant`` starts from our model's answer.

Hints only choose where the climbs start, not what they may answer: every
answer is a layout's highest feasible rate on the rate lattice
(``splitjax.provision_rates``), the best under the unimodal assumption
(``splitjax.provision_climb``). Given the same inputs a run asks the same
probes, so a re-run is answered by the probe cache.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import time
from typing import Callable, Iterable, Mapping, Sequence

from splitjax.paper import (H100, PAPER_DESIGNS, LayoutPoint, PaperDesign, RunSettings,
                            SearchOutcome, SearchSpec, Tuning, Variant, base_sim, paper_budget)
from splitjax.provision import (Bisection, BudgetKind, Design, EvalMode, Hint, Layout, Pool,
                                SimProbe, prices, search)

PairKey = tuple[str, str | None]      # (prompt kind, token kind) or (co-located kind, None)


class Workers:
  """``workers`` spawned processes (<= 1: every call runs inline at submit)."""

  def __init__(self, workers: int):
    self.workers = workers
    self._pool = None

  def __enter__(self) -> Workers:
    if self.workers > 1:
      import multiprocessing as mp
      self._pool = cf.ProcessPoolExecutor(self.workers, mp.get_context("spawn"))
    return self

  def __exit__(self, *exc) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True)

  def submit(self, fn: Callable, *args) -> cf.Future:
    if self._pool is not None:
      return self._pool.submit(fn, *args)
    future = cf.Future()
    future.set_result(fn(*args))
    return future

  def map(self, tasks: Sequence[tuple]) -> list:
    """``[fn(*args) for fn, *args in tasks]``, run in the pool."""
    return [f.result() for f in [self.submit(*t) for t in tasks]]


def run_search(spec: SearchSpec, settings: RunSettings,
               hints: Mapping[PairKey, Hint] | None = None,
               start: Sequence[Layout] = ()) -> SearchOutcome:
  """One provisioning search, inline (runs in a worker process)."""
  t0, c0 = time.perf_counter(), time.process_time()
  probe = SimProbe.create(base_sim(spec.trace, spec.design, spec.variant, spec.tuning),
                          settings.probe(spec.trace))
  thr = spec.budget.kind == BudgetKind.ISO_THROUGHPUT
  refine = thr or spec.design == PaperDesign.SPLITWISE_ANY
  space = spec.design.space(settings.step, settings.max_machines,
                            settings.refine_step if refine else 0, settings.strategy,
                            settings.local_refine)
  design = Design.SPLIT if spec.design.split else Design.COLOCATED
  result = search(design, space, spec.budget, probe,
                  bisection=Bisection(tolerance=settings.tolerance), workers=1,
                  cache_dir=settings.cache_dir or None, hints=hints, start=start)
  point = lambda r: LayoutPoint(r.layout, r.max_rate, r.price.cost_per_hour_usd,
                                r.price.power_w, r.mode == EvalMode.MAX_RATE)
  return SearchOutcome(spec, point(result.best) if result.best else None,
                       tuple(point(r) for r in result.rows), result.probes,
                       time.perf_counter() - t0, time.process_time() - c0)


# ---------------------------------------------------------------- hints and dependencies


def _pair(design: PaperDesign) -> PairKey:
  _, first, second = design.value
  return (first[0], second[0] if second else None)


PAIR_DESIGNS = {_pair(d): d for d in PAPER_DESIGNS}


def pair_bests(outcome: SearchOutcome) -> dict[PairKey, LayoutPoint]:
  """The best bisected layout of each kind pair an outcome evaluated."""
  out: dict[PairKey, LayoutPoint] = {}
  for r in outcome.rows:
    lay = r.layout
    key = (lay.colocated.kind, None) if lay.colocated else (lay.prompt.kind, lay.token.kind)
    if r.bisected and r.max_rate > 0 and (key not in out or r.max_rate > out[key].max_rate):
      out[key] = r
  return out


def _scaled(outcome: SearchOutcome, spec: SearchSpec) -> dict[PairKey, Hint]:
  """Hints from ``outcome``'s pair bests, scaled by how many times each fits
  ``spec``'s budget (its machines and rate times that)."""
  out = {}
  for key, p in pair_bests(outcome).items():
    used = p.power_w if spec.budget.in_watts else p.cost_per_hour_usd
    scale = spec.budget.limit / used if used > 0 else 1.0
    pools = p.layout.pools
    out[key] = Hint(max(1, round(pools[0].machines * scale)), p.max_rate * scale)
  return out


def _same_share(best: LayoutPoint, spec: SearchSpec, prompt_kind: str) -> Hint:
  """A hint for a pair of ``prompt_kind`` from ``best`` (another pair with the
  same token kind): the same share of ``spec``'s budget on prompt machines,
  and its rate (the token pool, which mostly sets the rate, is alike)."""
  measure = lambda kind, n: spec.budget.measure(prices([kind])[kind].times(n))
  share = measure(best.layout.prompt.kind, best.layout.prompt.machines) / spec.budget.limit
  return Hint(max(1, round(share * spec.budget.limit / measure(prompt_kind, 1))), best.max_rate)


def _same(spec: SearchSpec, **changes) -> SearchSpec:
  return dataclasses.replace(spec, **changes)


def _at(spec: SearchSpec, kind: BudgetKind, settings: RunSettings, **changes) -> SearchSpec:
  return _same(spec, budget=paper_budget(kind, settings.budget_scale), **changes)


def _ours_at_rate(spec: SearchSpec, planned: Iterable[SearchSpec]) -> SearchSpec | None:
  """Our model's search of the same kind as the iso-throughput ``spec`` (its
  rate may differ: Baseline-H100's rate differs by variant)."""
  b = spec.budget
  return next((s for s in planned if s.variant == Variant.OURS and
               (s.trace, s.design, s.tuning) == (spec.trace, spec.design, spec.tuning) and
               (s.budget.kind, s.budget.minimize) == (b.kind, b.minimize)), None)


def _from_hh(spec: SearchSpec, hh: SearchOutcome) -> dict[PairKey, Hint]:
  """A paper split design's hint from Splitwise-HH's winner at the same budget:
  the same share of the budget on prompt machines (and HH's rate for HHcap,
  whose prompt machines are HH's)."""
  key = _pair(spec.design)
  win = pair_bests(hh).get(_pair(PaperDesign.SPLITWISE_HH))
  if win is None:
    return {}
  hint = _same_share(win, spec, key[0])
  return {key: hint if spec.design == PaperDesign.SPLITWISE_HHCAP else Hint(hint.prompt_machines)}


def _hh_first(spec: SearchSpec) -> bool:
  """A paper split design at iso-power other than HH: it starts from HH's answer."""
  return (spec.design.in_paper and spec.design.split and
          spec.design != PaperDesign.SPLITWISE_HH and spec.budget.kind == BudgetKind.ISO_POWER)


def depends_on(spec: SearchSpec, settings: RunSettings,
               planned: Iterable[SearchSpec] = ()) -> list[SearchSpec]:
  """The searches ``spec`` takes its hints (or start layouts) from (see the
  module docstring); ``planned``: the searches planned so far."""
  if spec.budget.kind == BudgetKind.ISO_THROUGHPUT:
    if spec.variant == Variant.OURS:
      return [_at(spec, BudgetKind.ISO_POWER, settings)]
    ours = _ours_at_rate(spec, planned)
    return [ours] if ours else []
  if spec.variant != Variant.OURS:
    return [_same(spec, variant=Variant.OURS)]
  cost = spec.budget.kind == BudgetKind.ISO_COST
  if spec.design != PaperDesign.SPLITWISE_ANY:
    if _hh_first(spec):
      return [_same(spec, design=PaperDesign.SPLITWISE_HH)]
    return [_at(spec, BudgetKind.ISO_POWER, settings)] if cost else []
  if spec.tuning != Tuning.DEFAULT:
    return [_same(spec, tuning=Tuning.DEFAULT)]
  deps = [_same(spec, design=d) for d in PAIR_DESIGNS.values() if d.split]
  return deps + ([_at(spec, BudgetKind.ISO_POWER, settings)] if cost else [])


def hints_for(spec: SearchSpec, outcomes: Mapping[SearchSpec, SearchOutcome],
              settings: RunSettings) -> dict[PairKey, Hint]:
  """Where each kind pair's climb starts (empty: cold, from the middle)."""
  get = outcomes.get
  if spec.budget.kind == BudgetKind.ISO_THROUGHPUT:
    return {}
  if spec.variant != Variant.OURS:
    ours = get(_same(spec, variant=Variant.OURS))
    return _scaled(ours, spec) if ours else {}
  cost = spec.budget.kind == BudgetKind.ISO_COST
  if spec.design != PaperDesign.SPLITWISE_ANY:
    if _hh_first(spec):
      hh = get(_same(spec, design=PaperDesign.SPLITWISE_HH))
      return _from_hh(spec, hh) if hh else {}
    power = get(_at(spec, BudgetKind.ISO_POWER, settings)) if cost else None
    return _scaled(power, spec) if power else {}
  if spec.tuning != Tuning.DEFAULT:
    default = get(_same(spec, tuning=Tuning.DEFAULT))
    return _scaled(default, spec) if default else {}
  out = {}
  if cost and (power := get(_at(spec, BudgetKind.ISO_POWER, settings))):
    out = _scaled(power, spec)
  by_token = {}               # a pair no paper design has: from the one of its token kind
  for key, d in PAIR_DESIGNS.items():          # exactly the paper design's climb
    if not d.split:
      continue
    out.pop(key, None)
    mine = hints_for(_same(spec, design=d), outcomes, settings)
    out.update({k: h for k, h in mine.items() if k == key})
    if not cost and (o := get(_same(spec, design=d))) and (b := pair_bests(o).get(key)):
      if key[1] not in by_token or key[0] == H100:
        by_token[key[1]] = b
  for pk, tk in itertools.product(*spec.design.value[1:]):
    if (pk, tk) not in PAIR_DESIGNS and (pk, tk) not in out and tk in by_token:
      out[(pk, tk)] = _same_share(by_token[tk], spec, pk)
  return out


def start_for(spec: SearchSpec, outcomes: Mapping[SearchSpec, SearchOutcome],
              settings: RunSettings) -> list[Layout]:
  """Iso-throughput: guesses probed first (``provision.search``'s ``start``): the
  winner of our iso-power search of the design (or, for a variant, of our
  iso-throughput search), scaled by the required rate over its rate, and 20%
  more; counts on the search's finest grid."""
  if spec.budget.kind != BudgetKind.ISO_THROUGHPUT:
    return []
  src = (_at(spec, BudgetKind.ISO_POWER, settings) if spec.variant == Variant.OURS
         else _ours_at_rate(spec, outcomes))
  o = outcomes.get(src) if src else None
  if not (o and o.best and o.best.max_rate > 0 and o.best.layout.prompt):
    return []
  grid = settings.refine_step or settings.step
  rate = src.budget.rate if src.budget.kind == BudgetKind.ISO_THROUGHPUT else o.best.max_rate
  out = []
  for more in (1.0, 1.2):
    scale = spec.budget.rate / rate * more
    n = lambda p: max(grid, grid * round(p.machines * scale / grid))
    p, t = o.best.layout.prompt, o.best.layout.token
    out.append(Layout(Pool(n(p), p.kind), Pool(n(t), t.kind)))
  return list(dict.fromkeys(out))


# ---------------------------------------------------------------- the run


def priority(spec: SearchSpec) -> int:
  """Which ready search starts first: those others wait for (Splitwise-HH at
  iso-power), then the longest (Splitwise-any, lazy first), so the run does
  not end on one long search while the other worker idles; reruns last."""
  if spec.variant != Variant.OURS:
    return 0
  if spec.design == PaperDesign.SPLITWISE_ANY:
    return 5 if spec.tuning != Tuning.DEFAULT else 4
  if spec.design == PaperDesign.SPLITWISE_HH and spec.budget.kind == BudgetKind.ISO_POWER:
    return 6
  return 3 if spec.budget.kind == BudgetKind.ISO_THROUGHPUT else 2 if spec.design.split else 1


@dataclasses.dataclass
class Job:
  """A task besides the searches (a check): ``fn(*args)`` in a worker, then
  ``done(result)`` in this process; started by ``priority`` like searches."""
  priority: float
  fn: Callable
  args: tuple
  done: Callable[[object], None]


def run_graph(specs: Iterable[SearchSpec], settings: RunSettings, workers: Workers,
              progress: Callable[[str], None] | None = None,
              more: Callable[[Mapping[SearchSpec, SearchOutcome], Sequence[SearchSpec]],
                             Iterable[SearchSpec | Job]] | None = None
              ) -> dict[SearchSpec, SearchOutcome]:
  """Every search, each once the planned searches it depends on are done, and
  every :class:`Job`, at most one per worker at a time, the highest
  :func:`priority` first; ``more(outcomes, planned)`` (called after each
  finishes) may plan more searches and jobs."""
  planned = list(dict.fromkeys(specs))
  jobs: list[Job] = []
  out: dict[SearchSpec, SearchOutcome] = {}
  running: dict[cf.Future, SearchSpec | Job] = {}
  started: set[SearchSpec] = set()
  while True:
    ready: list[SearchSpec | Job] = jobs + [
        s for s in planned if s not in started and
        all(d in out for d in depends_on(s, settings, planned) if d in planned)]
    while ready and len(running) < max(1, workers.workers):
      x = max(ready, key=lambda x: x.priority if isinstance(x, Job) else priority(x))
      ready.remove(x)
      if isinstance(x, Job):
        jobs.remove(x)
        running[workers.submit(x.fn, *x.args)] = x
      else:
        started.add(x)
        running[workers.submit(run_search, x, settings, hints_for(x, out, settings),
                               start_for(x, out, settings))] = x
    if not running:
      return out
    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
    for f in done:
      x = running.pop(f)
      if isinstance(x, Job):
        x.done(f.result())
        continue
      o = out[x] = f.result()
      if progress:
        win = f"{o.best.layout.label}: {o.best.max_rate:.1f} req/s" if o.best else "no layout"
        progress(f"[{len(out)}/{len(planned)}] {o.spec.describe()} -> {win} "
                 f"({o.probes} probes, {o.seconds:.1f} s, {o.cpu_s:.1f} s CPU)")
    if more:
      for x in more(out, planned):
        if isinstance(x, Job):
          jobs.append(x)
        elif x not in planned:
          planned.append(x)
