"""Reproduce the Splitwise paper's headline claims by simulation (``splitjax.paper``).

  python scripts/reproduce_paper.py --output_dir runs/paper
  python scripts/reproduce_paper.py --output_dir runs/paper_quick --quick

For both Azure traces and the paper's six designs: each design's max throughput
under the nine SLOs at the paper's iso-power (40 DGX-H100 = 70 DGX-A100) and
iso-cost (40 DGX-H100 ~ 86 DGX-A100) budgets (provisioning searches: the best
prompt / token split for Splitwise designs), HHcap's least-power cluster at
Baseline-H100's throughput, the cost-optimal HH cluster at 70 req/s on code.
Claims off by more than 20% from the paper are recomputed with each modeling
difference switched to the paper simulator's. Writes DIR/report.md,
DIR/results.json ({"claims": [...], ...}) and PNG figures. Probe outcomes are
cached under --cache_dir, so a re-run takes seconds. No jax is imported.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402

_OUTPUT = flags.DEFINE_string("output_dir", "runs/paper", "Where the report goes.")
_QUICK = flags.DEFINE_bool("quick", False, "Shorter probes, coarser grid, looser bisection.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes running searches (0: one per CPU, "
                                 "at most 2).")
_CACHE = flags.DEFINE_string("cache_dir", cli.repo_path(".cache", "provision"),
                             "Probe outcome cache ('' disables it).")
_TRACES = flags.DEFINE_list("traces", ["code", "conv"], "Azure traces (code, conv).")
_REQUESTS = flags.DEFINE_integer("requests", 0, "Fewest requests per probe (0: the preset's).")
_DURATION = flags.DEFINE_float("min_duration_s", 0.0, "Shortest probe, seconds of arrivals "
                               "(0: the preset's).")
_STEP = flags.DEFINE_integer("step", 0, "Grid step, machines (0: the preset's).")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.0, "Bisection tolerance (0: the preset's).")
_SCALE = flags.DEFINE_float("budget_scale", 1.0, "x the paper's budgets and the 70 req/s "
                            "(small values for smoke tests).")
_BEYOND = flags.DEFINE_bool("beyond", True, "Also search every prompt / token kind pair "
                            "(Splitwise-any, refined grid) at both budgets, with the default "
                            "and with lazy mixed-pool borrowing.")
_LENGTH = flags.DEFINE_float("check_duration_s", 0.0, "Also bisect a few iso-power winners "
                             "with probes this long, seconds (probe-length check; 0: twice "
                             "the probes' duration; < 0: skip).")
_SWEEP = flags.DEFINE_bool("hh_sweep", True, "Also bisect Splitwise-HH on a (prompt, token) "
                           "grid of 2 x step for the heat maps.")
_RERUNS = flags.DEFINE_bool("reruns", True, "Rerun deviating claims' searches per modeling "
                            "difference.")


def settings_from_flags():
  from splitjax.paper import QUICK, RunSettings, Trace
  s = QUICK if _QUICK.value else RunSettings()
  over = {"requests": _REQUESTS.value, "step": _STEP.value, "tolerance": _TOLERANCE.value,
          "min_duration_s": _DURATION.value}
  return dataclasses.replace(
      s, **{k: v for k, v in over.items() if v}, budget_scale=_SCALE.value,
      traces=tuple(Trace(t) for t in _TRACES.value), workers=_WORKERS.value,
      cache_dir=_CACHE.value)


def initial_specs(settings):
  """Every search of our model that needs no other's answer to be planned."""
  from splitjax import paper as P
  from splitjax.provision import BudgetKind
  designs = P.PaperDesign if _BEYOND.value else P.PAPER_DESIGNS
  kinds = (BudgetKind.ISO_POWER, BudgetKind.ISO_COST)
  specs = [P.budget_spec(t, d, k, settings) for t in settings.traces for d in designs
           for k in kinds]
  if _BEYOND.value:
    specs += [P.budget_spec(t, P.PaperDesign.SPLITWISE_ANY, k, settings, tuning=tuning)
              for tuning in settings.tunings if tuning != P.Tuning.DEFAULT
              for t in settings.traces for k in kinds]
  if P.Trace.CODE in settings.traces:
    specs.append(P.code_cost_spec(settings))
  return specs


class Plan:
  """``more(outcomes)`` for ``paper_run.run_graph``: HHcap's searches once
  Baseline-H100's rate is known; once every claim with a published value can
  be computed, the reruns of the deviating ones under each modelling variant."""

  def __init__(self, settings, log):
    from splitjax import paper as P
    self.settings, self.log = settings, log
    self.variants = [v for v in P.Variant if v != P.Variant.OURS]
    self.off = None          # the deviating claims (None: not known yet)

  def _claims_ready(self, outcomes, planned) -> bool:
    from splitjax import paper as P
    return all(s in outcomes for s in planned
               if s.design != P.PaperDesign.SPLITWISE_ANY and s.variant == P.Variant.OURS)

  def more(self, outcomes, planned):
    from splitjax import paper_claims as C
    s = self.settings
    out = list(C.hhcap_specs(outcomes, s))
    if self.off is None and self._claims_ready(outcomes, list(planned) + out):
      self.off = [c.key for c in C.compute_claims(outcomes, s) if c.deviates(s.deviation)]
      if self.off and _RERUNS.value:
        self.log(f"off by more than {s.deviation:.0%}: {', '.join(k.text for k in self.off)};"
                 f" rerunning with {', '.join(v.value for v in self.variants)}")
    if self.off and _RERUNS.value:
      out += [x for v in self.variants for k in self.off for x in C.claim_specs(k, s, v)]
      if C.ClaimKey.HHCAP_LOWER_POWER in self.off:
        out += [x for v in self.variants for x in C.hhcap_specs(outcomes, s, v)]
    return out


def searches(settings, workers, log):
  """Every search of our model, then the reruns: (outcomes, claims, reruns, the
  deviating claims)."""
  from splitjax import paper_claims as C
  from splitjax import paper_run as R
  plan = Plan(settings, log)
  outcomes = R.run_graph(initial_specs(settings), settings, workers, log, plan.more)
  claims = C.compute_claims(outcomes, settings)
  reruns = {}
  if plan.off and _RERUNS.value:
    reruns = {v: C.compute_claims(outcomes, settings, v) for v in plan.variants}
  return outcomes, claims, reruns, plan.off or []


def _hh_rows(outcomes, trace):
  """(prompt, token) -> max rate of every Splitwise-HH layout our searches
  resolved on ``trace`` (the heat map's cells that cost nothing)."""
  from splitjax import paper as P
  return {(r.layout.prompt.machines, r.layout.token.machines): r.max_rate
          for s, o in outcomes.items() for r in o.rows
          if (s.trace, s.design, s.variant, s.tuning) == (
              trace, P.PaperDesign.SPLITWISE_HH, P.Variant.OURS, P.Tuning.DEFAULT)
          and s.budget.kind != P.BudgetKind.ISO_THROUGHPUT and r.bisected}


def checks(outcomes, settings, workers, off):
  """Everything after the searches, in one batch of tasks: the probe-length
  check, the HH sweep, HHcap on the paper's split (if that claim deviates), the
  latency runs. Returns (length checks, sweep, fixed-split checks, latency runs)."""
  from splitjax import paper as P
  from splitjax import paper_claims as C
  from splitjax import paper_run as R
  from splitjax.paper_plots import simulate_latencies
  from splitjax.provision import BudgetKind
  trace = P.Trace.CONV if P.Trace.CONV in settings.traces else settings.traces[0]
  win = lambda d: (o.best if (o := outcomes.get(P.budget_spec(trace, d, BudgetKind.ISO_POWER,
                                                               settings))) else None)
  tasks = {"length": [], "sweep": [], "fixed": [], "latency": []}
  longer = _LENGTH.value or 2 * settings.min_duration_s
  d = P.PaperDesign
  wins = [(x, b) for x in (d.BASELINE_A100, d.BASELINE_H100, d.SPLITWISE_AA, d.SPLITWISE_HH)
          if (b := win(x))]
  if not (longer < 0 or longer == settings.min_duration_s):
    tasks["length"] = [(R.length_check, trace, x, b.layout, n, settings, b.max_rate)
                       for n in (settings.min_duration_s, longer) for x, b in wins]
  if _SWEEP.value:
    step = 2 * settings.step
    top = max(step, round(P.PAPER_H100_MACHINES * settings.budget_scale))
    tasks["sweep"] = [(R.hh_sweep, t, tuple(range(step, top + 1, step)), settings,
                       _hh_rows(outcomes, t) if settings.strategy == P.Strategy.CLIMB else {})
                      for t in settings.traces]
  if C.ClaimKey.HHCAP_LOWER_POWER in off:     # a search difference, not a modelling one
    tasks["fixed"] = [(R.fixed_split_hhcap, s.trace, s.budget.rate, settings)
                      for s in C.hhcap_specs(outcomes, settings)]
  lat = [(x, b) for x in P.PAPER_DESIGNS if (b := win(x))]
  if lat:
    rate = min(b.max_rate for _, b in lat)
    tasks["latency"] = [(simulate_latencies, trace, x, b.layout, rate, settings)
                        for x, b in lat]
  futures = {k: [workers.submit(*t) for t in v] for k, v in tasks.items()}
  got = {k: [f.result() for f in v] for k, v in futures.items()}
  sweep = [c for cs in got["sweep"] for c in cs]
  return got["length"], sweep, got["fixed"], (trace, got["latency"])


def figures(outcomes, settings, out: Path, sweep, latency) -> list[str]:
  from splitjax import paper_plots as pp
  made = [pp.plot_throughput_vs(outcomes, settings, m, out / f"throughput_vs_{m}.png")
          for m in ("cost", "power")]
  made += [p for t in settings.traces
           if (p := pp.plot_hh_heatmap(outcomes, t, out / f"hh_sweep_{t.value}.png", sweep))]
  trace, runs = latency
  if runs:
    made.append(pp.plot_latency_cdfs(runs, trace, out / f"latency_cdf_{trace.value}.png"))
  return [p.name for p in made]


def _cpu_s() -> float:
  """CPU seconds of this process and its finished children (the workers)."""
  import resource
  return sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
             for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def main(argv):
  del argv
  from splitjax.config import to_plain_dict
  from splitjax.paper_plots import render_report
  from splitjax.provision import ProvisionError
  t0 = time.perf_counter()
  try:
    settings = settings_from_flags()
  except (ValueError, ProvisionError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = Path(_OUTPUT.value)
  out.mkdir(parents=True, exist_ok=True)
  log = lambda line: print(line, flush=True)
  import os

  from splitjax.paper_run import Workers
  c0 = _cpu_s()
  with Workers(settings.workers or min(2, os.cpu_count() or 1)) as workers:
    outcomes, claims, reruns, off = searches(settings, workers, log)
    t_searches = time.perf_counter()
    lengths, sweep, fixed, latency = checks(outcomes, settings, workers, off)
  t1 = time.perf_counter()
  names = figures(outcomes, settings, out, sweep, latency)
  t2 = time.perf_counter()
  cpu = _cpu_s() - c0
  probes = sum(o.probes for o in outcomes.values())
  header = [f"Settings: probes of at least {settings.min_duration_s:g} s and "
            f"{settings.requests} requests, judged from {settings.measure_from:.0%} to "
            f"{settings.measure_to:.0%} of their arrivals, grid step {settings.step}, "
            f"bisection tolerance {settings.tolerance:.0%}, budgets x{settings.budget_scale:g}"
            f", traces {', '.join(t.value for t in settings.traces)}; Llama2-70B, the "
            f"paper's nine SLOs against DGX-A100.",
            f"Run: {len(outcomes)} searches, {probes} probes in {t_searches - t0:.0f} s, checks "
            f"{t1 - t_searches:.0f} s, figures {t2 - t1:.0f} s; {cpu:.0f} s CPU in all processes "
            f"(probe outcomes cached under {settings.cache_dir or 'nowhere'})."]
  (out / "report.md").write_text(render_report(claims, reruns, outcomes, settings, names,
                                               header, lengths, fixed))
  (out / "results.json").write_text(json.dumps({
      "claims": [c.to_dict() for c in claims],
      "reruns": {v.value: [c.to_dict() for c in cs] for v, cs in reruns.items()},
      "searches": [o.to_dict() for o in outcomes.values()],
      "length_checks": [to_plain_dict(c) for c in lengths],
      "hhcap_fixed_split": [to_plain_dict(c) for c in fixed],
      "hh_sweep": [to_plain_dict(c) for c in sweep],
      "settings": to_plain_dict(settings), "figures": names,
      "timing": {"searches_s": t_searches - t0, "checks_s": t1 - t_searches,
                 "figures_s": t2 - t1, "cpu_s": cpu, "probes": probes}},
      indent=2))
  print((out / "report.md").read_text().split("## Where")[0])
  print(f"wrote {out}/report.md, results.json and {len(names)} figures in {t2 - t0:.0f} s")
  return 0


if __name__ == "__main__":
  from absl import app
  app.run(main, flags_parser=cli.parse_flags)
