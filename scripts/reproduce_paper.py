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
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes running searches (0: one per CPU "
                                 "this process may use).")
_CACHE = flags.DEFINE_string("cache_dir", cli.repo_path(".cache", "provision"),
                             "Probe outcome cache ('' disables it).")
_TRACES = flags.DEFINE_list("traces", ["code", "conv"], "Azure traces (code, conv).")
_REQUESTS = flags.DEFINE_integer("requests", 0, "Fewest requests per probe (0: the preset's).")
_DURATION = flags.DEFINE_float("min_duration_s", 0.0, "Shortest probe, seconds of arrivals, "
                               "on every trace unless --code_min_duration_s is given (0: the "
                               "preset's: 120 s on conv, 60 s on code).")
_CODE_DURATION = flags.DEFINE_float("code_min_duration_s", 0.0, "Shortest probe on the code "
                                    "trace, seconds of arrivals (0: --min_duration_s if given, "
                                    "else the preset's).")
_STEP = flags.DEFINE_integer("step", 0, "Grid step, machines (0: the preset's).")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.0, "Bisection tolerance (0: the preset's).")
_SCALE = flags.DEFINE_float("budget_scale", 1.0, "x the paper's budgets and the 70 req/s "
                            "(small values for smoke tests).")
_BEYOND = flags.DEFINE_bool("beyond", True, "Also search every prompt / token kind pair "
                            "(Splitwise-any, refined grid) at both budgets, with the default "
                            "and with lazy mixed-pool borrowing.")
_LENGTH = flags.DEFINE_float("check_duration_s", 0.0, "Also bisect a few iso-power winners "
                             "per trace with probes this long, seconds (probe-length check; "
                             "0: twice the trace's probe duration; < 0: skip).")
_SWEEP = flags.DEFINE_bool("hh_sweep", True, "Also bisect Splitwise-HH on a (prompt, token) "
                           "grid of 2 x step for the heat maps.")
_RERUNS = flags.DEFINE_bool("reruns", True, "Rerun deviating claims' searches per modeling "
                            "difference.")


def settings_from_flags():
  from splitjax.paper import QUICK, RunSettings, Trace
  s = QUICK if _QUICK.value else RunSettings()
  over = {"requests": _REQUESTS.value, "step": _STEP.value, "tolerance": _TOLERANCE.value,
          "min_duration_s": _DURATION.value,
          "code_min_duration_s": _CODE_DURATION.value or _DURATION.value}
  return dataclasses.replace(
      s, **{k: v for k, v in over.items() if v}, budget_scale=_SCALE.value,
      traces=tuple(Trace(t) for t in _TRACES.value), workers=_WORKERS.value,
      cache_dir=_CACHE.value)


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
  from splitjax import paper as P
  from splitjax.config import to_plain_dict
  from splitjax.paper_plan import Extras, run
  from splitjax.paper_run import Workers
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
  c0 = _cpu_s()
  extras = Extras(beyond=_BEYOND.value, reruns=_RERUNS.value, sweep=_SWEEP.value,
                  check_duration_s=_LENGTH.value)
  with Workers(settings.workers or cli.usable_cpus()) as workers:
    outcomes, claims, reruns, off, got, t_searches = run(settings, extras, workers, log)
  lengths, fixed = got["length"], got["fixed"]
  sweep = [c for cs in got["sweep"] for c in cs]
  latency = (P.Trace.CONV if P.Trace.CONV in settings.traces else settings.traces[0],
             got["latency"])
  t1 = time.perf_counter()
  names = figures(outcomes, settings, out, sweep, latency)
  t2 = time.perf_counter()
  cpu = _cpu_s() - c0
  probes = sum(o.probes for o in outcomes.values())
  lengths_s = ", ".join(f"{settings.duration_s(t):g} s ({t.value})" for t in settings.traces)
  header = [f"Settings: probes of at least {lengths_s} and "
            f"{settings.requests} requests, judged from {settings.measure_from:.0%} to "
            f"{settings.measure_to:.0%} of their arrivals, grid step {settings.step}, "
            f"bisection tolerance {settings.tolerance:.0%}, budgets x{settings.budget_scale:g}"
            f", traces {', '.join(t.value for t in settings.traces)}; Llama2-70B, the "
            f"paper's nine SLOs against DGX-A100.",
            f"Run: {len(outcomes)} searches, {probes} probes in {t_searches - t0:.0f} s, checks "
            f"until {t1 - t0:.0f} s, figures {t2 - t1:.0f} s; {cpu:.0f} s CPU in all processes "
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
      "timing": {"searches_s": t_searches - t0, "checks_until_s": t1 - t0,
                 "figures_s": t2 - t1, "cpu_s": cpu, "probes": probes}},
      indent=2))
  print((out / "report.md").read_text().split("## Where")[0])
  print(f"wrote {out}/report.md, results.json and {len(names)} figures in {t2 - t0:.0f} s")
  return 0


if __name__ == "__main__":
  from absl import app
  app.run(main, flags_parser=cli.parse_flags)
