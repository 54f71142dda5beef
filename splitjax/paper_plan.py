"""What the reproduction runs, and when (no jax): the searches
(:func:`initial_specs`, then :class:`Plan` adds HHcap's and the reruns as
their inputs finish) and the checks beyond them (:class:`Checks`: the
probe-length check, the HH sweep, HHcap on the paper's split, the latency
runs), each submitted to the shared workers as soon as its inputs are known,
so the checks overlap the last searches instead of waiting for all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from splitjax import paper as P
from splitjax import paper_checks as K
from splitjax import paper_claims as C
from splitjax import paper_run as R
from splitjax.provision import BudgetKind

Outcomes = Mapping[P.SearchSpec, P.SearchOutcome]


@dataclasses.dataclass(frozen=True)
class Extras:
  """What runs besides our model's searches: Splitwise-any (``beyond``), the
  reruns of deviating claims, the HH sweep, the probe-length check on every
  trace with probes of ``check_duration_s`` (0: twice the trace's searches';
  < 0: none)."""
  beyond: bool = True
  reruns: bool = True
  sweep: bool = True
  check_duration_s: float = 0.0


def initial_specs(settings: P.RunSettings, extras: Extras) -> list[P.SearchSpec]:
  """Every search of our model that needs no other's answer to be planned."""
  designs = P.PaperDesign if extras.beyond else P.PAPER_DESIGNS
  kinds = (BudgetKind.ISO_POWER, BudgetKind.ISO_COST)
  specs = [P.budget_spec(t, d, k, settings) for t in settings.traces for d in designs
           for k in kinds]
  if extras.beyond:
    specs += [P.budget_spec(t, P.PaperDesign.SPLITWISE_ANY, k, settings, tuning=tuning)
              for tuning in settings.tunings if tuning != P.Tuning.DEFAULT
              for t in settings.traces for k in kinds]
  if P.Trace.CODE in settings.traces:
    specs.append(P.code_cost_spec(settings))
  return specs


class Plan:
  """``more(outcomes, planned)`` for :func:`paper_run.run_graph`: HHcap's
  searches once Baseline-H100's rate is known; once every claim with a
  published value can be computed, the reruns of the deviating ones under each
  modelling variant, on the trace each one's value comes from (a claim taking
  the best over traces reruns that trace's searches: the rerun value bounds
  the claim under the switch, see ``paper_plots.reruns_table``); and the
  :class:`Checks` whose inputs are ready."""

  def __init__(self, settings: P.RunSettings, extras: Extras, checks: Checks,
               log: Callable[[str], None]):
    self.settings, self.extras, self.checks, self.log = settings, extras, checks, log
    self.variants = [v for v in P.Variant if v != P.Variant.OURS]
    # Deviating claims -> the traces their values come from (None: not known yet).
    self.rerun_on: dict[C.ClaimKey, tuple[P.Trace, ...]] | None = None

  @property
  def off(self) -> list[C.ClaimKey] | None:
    """The deviating claims (None: not known yet)."""
    return None if self.rerun_on is None else list(self.rerun_on)

  def _claims_ready(self, outcomes: Outcomes, planned: Sequence[P.SearchSpec]) -> bool:
    return all(s in outcomes for s in planned
               if s.design != P.PaperDesign.SPLITWISE_ANY and s.variant == P.Variant.OURS)

  def more(self, outcomes: Outcomes,
           planned: Sequence[P.SearchSpec]) -> list[P.SearchSpec | R.Job]:
    s = self.settings
    out = list(C.hhcap_specs(outcomes, s))
    if self.rerun_on is None and self._claims_ready(outcomes, list(planned) + out):
      off = [c for c in C.compute_claims(outcomes, s) if c.deviates(s.deviation)]
      self.rerun_on = {c.key: c.traces for c in off}
      if off and self.extras.reruns:
        self.log(f"off by more than {s.deviation:.0%}: " + ", ".join(
            f"{c.key.text} ({'/'.join(t.value for t in c.traces)})" for c in off)
            + f"; rerunning there with {', '.join(v.value for v in self.variants)}")
    on = self.rerun_on
    if on and self.extras.reruns:
      out += [x for v in self.variants for k, t in on.items() for x in C.claim_specs(k, s, v, t)]
      if C.ClaimKey.HHCAP_LOWER_POWER in on:
        out += [x for v in self.variants
                for x in C.hhcap_specs(outcomes, s, v, on[C.ClaimKey.HHCAP_LOWER_POWER])]
    return out + self.checks.ready(outcomes, planned, self.off)


def hh_rows(outcomes: Outcomes, trace: P.Trace) -> dict[tuple[int, int], float]:
  """(prompt, token) -> max rate of every Splitwise-HH layout our budget
  searches resolved on ``trace`` (the heat map's cells that cost nothing)."""
  return {(r.layout.prompt.machines, r.layout.token.machines): r.max_rate
          for s, o in outcomes.items() for r in o.rows
          if (s.trace, s.design, s.variant, s.tuning) == (
              trace, P.PaperDesign.SPLITWISE_HH, P.Variant.OURS, P.Tuning.DEFAULT)
          and s.budget.kind != BudgetKind.ISO_THROUGHPUT and r.bisected}


class Checks:
  """The tasks beyond the searches, each group handed to ``run_graph`` as jobs
  once the searches it reads are done (:meth:`ready`); :meth:`finish` returns
  their results."""

  GROUPS = ("length", "sweep", "fixed", "latency")

  def __init__(self, settings: P.RunSettings, extras: Extras, workers: R.Workers):
    self.settings, self.extras, self.workers = settings, extras, workers
    self.trace = P.Trace.CONV if P.Trace.CONV in settings.traces else settings.traces[0]
    self.results: dict[str, list] = {}

  def _wins(self, outcomes: Outcomes, designs, trace: P.Trace | None = None) -> list | None:
    """(design, winner) of each design's iso-power search on ``trace`` (None:
    the latency runs' trace), None while one is still to come."""
    trace = trace or self.trace
    specs = [(d, P.budget_spec(trace, d, BudgetKind.ISO_POWER, self.settings))
             for d in designs]
    if any(s not in outcomes for _, s in specs):
      return None
    return [(d, outcomes[s].best) for d, s in specs if outcomes[s].best]

  def _tasks(self, group: str, outcomes: Outcomes, planned, off) -> list[tuple] | None:
    """The group's tasks, None if its inputs are not all known yet."""
    s, d = self.settings, P.PaperDesign
    if group == "length":
      tasks = []
      for trace in s.traces:
        own = s.duration_s(trace)
        longer = self.extras.check_duration_s or 2 * own
        if longer < 0 or longer == own:
          continue
        wins = self._wins(outcomes, (d.BASELINE_A100, d.BASELINE_H100, d.SPLITWISE_AA,
                                     d.SPLITWISE_HH), trace)
        if wins is None:
          return None
        tasks += [(K.length_check, trace, x, b.layout, n, s, b.max_rate)
                  for n in (own, longer) for x, b in wins]
      return tasks
    if group == "sweep":
      hh = [x for x in planned if x.design == d.SPLITWISE_HH and x.variant == P.Variant.OURS
            and x.budget.kind != BudgetKind.ISO_THROUGHPUT]
      if not self.extras.sweep:
        return []
      if any(x not in outcomes for x in hh):
        return None
      step = 2 * s.step
      top = max(step, round(P.PAPER_H100_MACHINES * s.budget_scale))
      return [(K.hh_sweep, t, tuple(range(step, top + 1, step)), s,
               hh_rows(outcomes, t) if s.strategy == P.Strategy.CLIMB else {})
              for t in s.traces]
    if group == "fixed":
      if off is None:
        return None
      return ([(K.fixed_split_hhcap, x.trace, x.budget.rate, s)
               for x in C.hhcap_specs(outcomes, s)]
              if C.ClaimKey.HHCAP_LOWER_POWER in off else [])
    wins = self._wins(outcomes, P.PAPER_DESIGNS)
    if wins is None:
      return None
    from splitjax.paper_plots import simulate_latencies
    rate = min((b.max_rate for _, b in wins), default=0.0)
    return [(simulate_latencies, self.trace, x, b.layout, rate, s) for x, b in wins]

  PRIORITY = {"sweep": 4.5, "length": 1.5, "fixed": 1.5, "latency": 1.5}

  def ready(self, outcomes: Outcomes, planned, off) -> list[R.Job]:
    """Jobs of the groups whose inputs just became known (each group once)."""
    jobs = []
    for g in self.GROUPS:
      if g not in self.results and (tasks := self._tasks(g, outcomes, planned, off)) is not None:
        self.results[g] = [None] * len(tasks)
        jobs += [R.Job(self.PRIORITY[g], t[0], t[1:], self._store(g, i))
                 for i, t in enumerate(tasks)]
    return jobs

  def _store(self, group: str, i: int) -> Callable[[object], None]:
    def done(result):
      self.results[group][i] = result
    return done

  def finish(self, outcomes: Outcomes, off) -> dict[str, list]:
    """Every group's results, running (inline) what never became ready."""
    for g in self.GROUPS:
      if g not in self.results:
        tasks = self._tasks(g, outcomes, list(outcomes), off or []) or []
        self.results[g] = [self.workers.submit(*t).result() for t in tasks]
    return self.results


def run(settings: P.RunSettings, extras: Extras, workers: R.Workers,
        log: Callable[[str], None]):
  """Every search and check: (outcomes, claims, reruns, deviating claims,
  check results by group, seconds when the last search finished)."""
  import time
  checks = Checks(settings, extras, workers)
  plan = Plan(settings, extras, checks, log)
  outcomes = R.run_graph(initial_specs(settings, extras), settings, workers, log, plan.more)
  searched = time.perf_counter()
  claims = C.compute_claims(outcomes, settings)
  reruns = {}
  if plan.off and extras.reruns:
    reruns = {v: C.compute_claims(outcomes, settings, v) for v in plan.variants}
  got = checks.finish(outcomes, plan.off)
  return outcomes, claims, reruns, plan.off or [], got, searched
