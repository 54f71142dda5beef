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
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes running searches (0: one per CPU).")
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


def searches(settings, log):
  """Every search of our model, then the reruns: (outcomes, claims, reruns, HHcap
  on the paper's fixed split if that claim deviates)."""
  from splitjax import paper as P
  from splitjax import paper_claims as C
  from splitjax.provision import BudgetKind
  designs = P.PaperDesign if _BEYOND.value else P.PAPER_DESIGNS
  specs = [P.budget_spec(t, d, k, settings) for t in settings.traces for d in designs
           for k in (BudgetKind.ISO_POWER, BudgetKind.ISO_COST)]
  if _BEYOND.value:
    specs += [P.budget_spec(t, P.PaperDesign.SPLITWISE_ANY, k, settings, tuning=tuning)
              for tuning in settings.tunings if tuning != P.Tuning.DEFAULT
              for t in settings.traces for k in (BudgetKind.ISO_POWER, BudgetKind.ISO_COST)]
  if P.Trace.CODE in settings.traces:
    specs.append(P.code_cost_spec(settings))
  outcomes = P.run_specs(specs, settings, log)
  outcomes.update(P.run_specs(C.hhcap_specs(outcomes, settings), settings, log))
  claims = C.compute_claims(outcomes, settings)
  off = [c.key for c in claims if c.deviates(settings.deviation)]
  reruns = {}
  if off and _RERUNS.value:
    variants = [v for v in P.Variant if v != P.Variant.OURS]
    log(f"off by more than {settings.deviation:.0%}: {', '.join(k.text for k in off)}; "
        f"rerunning with {', '.join(v.value for v in variants)}")
    more = [s for v in variants for k in off for s in C.claim_specs(k, settings, v)]
    outcomes.update(P.run_specs(more, settings, log))
    if C.ClaimKey.HHCAP_LOWER_POWER in off:
      more = [s for v in variants for s in C.hhcap_specs(outcomes, settings, v)]
      outcomes.update(P.run_specs(more, settings, log))
    reruns = {v: C.compute_claims(outcomes, settings, v) for v in variants}
  fixed = []
  if C.ClaimKey.HHCAP_LOWER_POWER in off:     # a search difference, not a modelling one
    fixed = _pool(settings, [(P.fixed_split_hhcap, s.trace, s.budget.rate, settings)
                             for s in C.hhcap_specs(outcomes, settings)])
  return outcomes, claims, reruns, fixed


def latency_runs(outcomes, settings):
  """Every design's iso-power winner at the lowest of their max rates (conv if run)."""
  from splitjax import paper as P
  from splitjax.paper_plots import simulate_latencies
  from splitjax.provision import BudgetKind
  trace = P.Trace.CONV if P.Trace.CONV in settings.traces else settings.traces[0]
  wins = [(d, o.best) for d in P.PAPER_DESIGNS
          if (o := outcomes.get(P.budget_spec(trace, d, BudgetKind.ISO_POWER, settings)))
          and o.best]
  if not wins:
    return trace, []
  rate = min(b.max_rate for _, b in wins)
  return trace, _pool(settings, [(simulate_latencies, trace, d, b.layout, rate, settings)
                                 for d, b in wins])


def _pool(settings, tasks):
  import concurrent.futures as cf
  import multiprocessing as mp
  workers = max(1, min(settings.workers or 2, len(tasks)))
  with cf.ProcessPoolExecutor(workers, mp.get_context("spawn")) as pool:
    return [f.result() for f in [pool.submit(*t) for t in tasks]]


def length_checks(outcomes, settings):
  """Baselines' and AA / HH's iso-power winners (conv if run) bisected with the
  searches' probes and with --check_duration_s ones."""
  from splitjax import paper as P
  from splitjax.provision import BudgetKind
  longer = _LENGTH.value or 2 * settings.min_duration_s
  if longer < 0 or longer == settings.min_duration_s:
    return []
  trace = P.Trace.CONV if P.Trace.CONV in settings.traces else settings.traces[0]
  d = P.PaperDesign
  wins = [(x, o.best) for x in (d.BASELINE_A100, d.BASELINE_H100, d.SPLITWISE_AA,
                                d.SPLITWISE_HH)
          if (o := outcomes.get(P.budget_spec(trace, x, BudgetKind.ISO_POWER, settings)))
          and o.best]
  return _pool(settings, [(P.length_check, trace, x, b.layout, n, settings)
                          for n in (settings.min_duration_s, longer) for x, b in wins])


def hh_sweep(settings):
  """Splitwise-HH max rates on a (prompt, token) grid of 2 x step up to the budget's
  H100 count per pool, both traces (the heat maps' off-budget cells)."""
  from splitjax import paper as P
  from splitjax.provision import Layout, Pool
  if not _SWEEP.value:
    return []
  step = 2 * settings.step
  top = max(step, round(P.PAPER_H100_MACHINES * settings.budget_scale))
  counts = range(step, top + 1, step)
  return _pool(settings, [
      (P.length_check, t, P.PaperDesign.SPLITWISE_HH, Layout(Pool(p, P.H100), Pool(k, P.H100)),
       settings.min_duration_s, settings) for t in settings.traces for p in counts
      for k in counts])


def figures(outcomes, settings, out: Path, sweep) -> list[str]:
  from splitjax import paper_plots as pp
  made = [pp.plot_throughput_vs(outcomes, settings, m, out / f"throughput_vs_{m}.png")
          for m in ("cost", "power")]
  made += [p for t in settings.traces
           if (p := pp.plot_hh_heatmap(outcomes, t, out / f"hh_sweep_{t.value}.png", sweep))]
  trace, runs = latency_runs(outcomes, settings)
  if runs:
    made.append(pp.plot_latency_cdfs(runs, trace, out / f"latency_cdf_{trace.value}.png"))
  return [p.name for p in made]


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
  outcomes, claims, reruns, fixed = searches(settings, log)
  checks = length_checks(outcomes, settings)
  sweep = hh_sweep(settings)
  t1 = time.perf_counter()
  names = figures(outcomes, settings, out, sweep)
  t2 = time.perf_counter()
  probes = sum(o.probes for o in outcomes.values())
  header = [f"Settings: probes of at least {settings.min_duration_s:g} s and "
            f"{settings.requests} requests, judged from {settings.measure_from:.0%} to "
            f"{settings.measure_to:.0%} of their arrivals, grid step {settings.step}, "
            f"bisection tolerance {settings.tolerance:.0%}, budgets x{settings.budget_scale:g}"
            f", traces {', '.join(t.value for t in settings.traces)}; Llama2-70B, the "
            f"paper's nine SLOs against DGX-A100.",
            f"Run: {len(outcomes)} searches, {probes} probes in {t1 - t0:.0f} s, figures "
            f"{t2 - t1:.0f} s (probe outcomes cached under {settings.cache_dir or 'nowhere'})."]
  (out / "report.md").write_text(render_report(claims, reruns, outcomes, settings, names,
                                               header, checks, fixed))
  (out / "results.json").write_text(json.dumps({
      "claims": [c.to_dict() for c in claims],
      "reruns": {v.value: [c.to_dict() for c in cs] for v, cs in reruns.items()},
      "searches": [o.to_dict() for o in outcomes.values()],
      "length_checks": [to_plain_dict(c) for c in checks],
      "hhcap_fixed_split": [to_plain_dict(c) for c in fixed],
      "hh_sweep": [to_plain_dict(c) for c in sweep],
      "settings": to_plain_dict(settings), "figures": names,
      "timing": {"searches_s": t1 - t0, "figures_s": t2 - t1, "probes": probes}},
      indent=2))
  print((out / "report.md").read_text().split("## Where")[0])
  print(f"wrote {out}/report.md, results.json and {len(names)} figures in {t2 - t0:.0f} s")
  return 0


if __name__ == "__main__":
  from absl import app
  app.run(main, flags_parser=cli.parse_flags)
