"""The paper reproduction's outputs: figures (matplotlib, Agg, PNG) and the
markdown report, from ``splitjax.paper`` outcomes and claims (no jax)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Mapping, Sequence

from splitjax.paper import (HHCAP_PAPER_SPLIT, FixedSplitCheck, LengthCheck, Outcomes,
                            PaperDesign, RunSettings, Trace, Tuning, Variant, base_sim,
                            budget_spec)
from splitjax.paper_claims import Claim
from splitjax.provision import BudgetKind, Layout
from splitjax.provision_probe import probe_config

BUDGETS = (BudgetKind.ISO_POWER, BudgetKind.ISO_COST)


@dataclasses.dataclass(frozen=True)
class Latencies:
  """Per completed request of one simulation: TTFT and mean TBT, seconds."""
  design: PaperDesign
  layout: Layout
  rate: float
  ttft_s: tuple[float, ...]
  tbt_s: tuple[float, ...]


def simulate_latencies(trace: Trace, design: PaperDesign, layout: Layout, rate: float,
                       settings: RunSettings) -> Latencies:
  """One probe-like simulation of ``layout`` at ``rate`` req/s, its latencies."""
  from splitjax.metrics import RequestStatus
  from splitjax.sim.build import build
  probe = settings.probe(trace)
  cfg = probe_config(base_sim(trace, design), layout, rate, probe)
  sim, specs = build(cfg)
  judged = {s.request_id for s in probe.window.judged(specs, probe.horizon_s(rate))}
  done = [r for r in sim.run(specs).records
          if r.status == RequestStatus.COMPLETED and r.request_id in judged]
  ttft = tuple(r.first_token_s - r.arrival_s for r in done)
  tbt = tuple((r.last_token_s - r.first_token_s) / (r.tokens - 1) for r in done if r.tokens > 1)
  return Latencies(design, layout, rate, ttft, tbt)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_throughput_vs(outcomes: Outcomes, settings: RunSettings, measure: str,
                       path: Path) -> Path:
  """Max rate (req/s) of each design's winner vs its cost ($/h) or power (kW),
  both budgets, one panel per trace. ``measure``: 'cost' or 'power'."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(settings.traces), figsize=(5.5 * len(settings.traces), 4),
                           squeeze=False)
  for ax, trace in zip(axes[0], settings.traces):
    for d, marker in zip(PaperDesign, "sDo^vP*"):
      pts = [o.best for k in BUDGETS
             if (o := outcomes.get(budget_spec(trace, d, k, settings))) and o.best]
      xs = [p.cost_per_hour_usd if measure == "cost" else p.power_w / 1e3 for p in pts]
      ax.plot(xs, [p.max_rate for p in pts], marker=marker, linestyle="-" if d.split else "--",
              alpha=0.8, markersize=9 if d.in_paper else 13, label=d.label,
              zorder=1 if d.in_paper else 0)
    ax.set_title(f"{trace.value} trace: iso-power and iso-cost winners")
    ax.set_xlabel("cost ($/h)" if measure == "cost" else "GPU power (kW)")
    ax.set_ylabel("max throughput under the SLOs (req/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_hh_heatmap(outcomes: Outcomes, trace: Trace, path: Path,
                    sweep: Sequence[LengthCheck] = ()) -> Path | None:
  """Max rate per (prompt, token) Splitwise-HH layout bisected in any of the
  trace's HH searches or in ``sweep`` (blank: not evaluated); None if none."""
  rates: dict[tuple[int, int], float] = {}
  for spec, o in outcomes.items():
    if (spec.trace, spec.design, spec.variant) == (trace, PaperDesign.SPLITWISE_HH,
                                                   Variant.OURS):
      for r in o.rows:
        if r.bisected:
          rates[(r.layout.prompt.machines, r.layout.token.machines)] = r.max_rate
  for c in sweep:
    if (c.trace, c.design) == (trace, PaperDesign.SPLITWISE_HH):
      rates[(c.layout.prompt.machines, c.layout.token.machines)] = c.max_rate
  if not rates:
    return None
  import numpy as np
  plt = _pyplot()
  ps = sorted({p for p, _ in rates})
  ts = sorted({t for _, t in rates})
  grid = np.full((len(ts), len(ps)), np.nan)
  for (p, t), v in rates.items():
    grid[ts.index(t), ps.index(p)] = v
  fig, ax = plt.subplots(figsize=(6, 4.5))
  im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
  ax.set_xticks(range(len(ps)), [str(p) for p in ps])
  ax.set_yticks(range(len(ts)), [str(t) for t in ts])
  for (p, t), v in rates.items():
    ax.text(ps.index(p), ts.index(t), f"{v:.0f}", ha="center", va="center", fontsize=7,
            color="w")
  ax.set_xlabel("prompt machines (DGX-H100)")
  ax.set_ylabel("token machines (DGX-H100)")
  ax.set_title(f"Splitwise-HH max req/s under the SLOs ({trace.value})")
  fig.colorbar(im, ax=ax, label="req/s")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_latency_cdfs(runs: Sequence[Latencies], trace: Trace, path: Path) -> Path:
  """CDFs of TTFT and TBT (ms) of every design at one common rate."""
  import numpy as np
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for lat in runs:
    for ax, xs in zip(axes, (lat.ttft_s, lat.tbt_s)):
      x = np.sort(np.asarray(xs)) * 1e3
      ax.plot(x, np.arange(1, len(x) + 1) / max(1, len(x)),
              label=f"{lat.design.label} ({lat.layout.label})")
  rate = runs[0].rate if runs else math.nan
  for ax, name in zip(axes, ("TTFT", "TBT (mean per request)")):
    ax.set_xscale("log")
    ax.set_xlabel(f"{name} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{name}, {trace.value} trace at {rate:.1f} req/s")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------- report


def _num(x: float | None, fmt: str = ".2f") -> str:
  return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def claims_table(claims: Sequence[Claim]) -> list[str]:
  lines = ["| claim | paper value | our value | ratio ours/paper | note |", "|---|---|---|---|---|"]
  for c in claims:
    paper = (f"{c.key.paper_value:g} {c.key.unit}" if c.key.paper_value is not None
             else "not given in our sources")
    ours = f"{_num(c.our_value)} {c.key.unit}" + (f" ({c.our_label})" if c.our_label else "")
    note = c.basis + (f". {c.detail}" if c.detail else "")
    lines.append(f"| {c.key.text} | {paper} | {ours} | {_num(c.ratio)} | {note} |")
  return lines


def reruns_table(claims: Sequence[Claim], reruns: Mapping[Variant, Sequence[Claim]],
                 tolerance: float, resolution: float = 0.0) -> list[str]:
  """Claims off by more than ``tolerance``: ours / paper with each modeling
  difference switched to the paper simulator's, and which one explains it: the
  closest to the paper among the switches moving our value toward it by more
  than ``resolution`` (relative; what the searches' rate lattice can tell apart)."""
  off = [c for c in claims if c.deviates(tolerance)]
  if not off:
    return [f"Every claim with a published value is within {tolerance:.0%} of the paper."]
  heads = [v for v in reruns]
  lines = ["| claim (rerun on) | paper | ours (ratio) | " + " | ".join(
      f"{v.description} (ratio)" for v in heads) + " | closest to the paper |",
      "|---|---|---|" + "---|" * len(heads) + "---|"]
  for c in off:
    cells, best, small = [], (abs(c.ratio - 1.0), ""), []
    for v in heads:
      r = next((x for x in reruns[v] if x.key == c.key), None)
      cells.append(f"{_num(r.our_value if r else None)} ({_num(r.ratio if r else None)})")
      if not (r and r.ratio is not None and abs(r.ratio - 1.0) < abs(c.ratio - 1.0)):
        continue
      move = abs(r.our_value / c.our_value - 1.0)
      if move <= resolution:
        small.append(f"{v.description} {move:.0%}")
      elif abs(r.ratio - 1.0) < best[0]:
        best = (abs(r.ratio - 1.0), v.description)
    verdict = best[1] or (
        f"none beyond the searches' resolution ({resolution:.0%}): " + ", ".join(small)
        if small else "none (no switch moves it closer)")
    on = "/".join(t.value for t in c.traces) or "every trace"
    bound = "upper" if c.key.lowest_over_traces else "lower"
    lines.append(f"| {c.key.text} ({on}; {bound} bound) | {c.key.paper_value:g} | "
                 f"{_num(c.our_value)} "
                 f"({_num(c.ratio)}) | " + " | ".join(cells) + f" | {verdict} |")
  return lines


def designs_table(outcomes: Outcomes, settings: RunSettings) -> list[str]:
  lines = ["| trace | design | budget | winner | max req/s | $/h | kW | probes |",
           "|---|---|---|---|---|---|---|---|"]
  for trace in settings.traces:
    for d, t, k in itertools.product(PaperDesign, Tuning, BUDGETS):
      if o := outcomes.get(budget_spec(trace, d, k, settings, tuning=t)):
        b, name = o.best, d.label + ("" if t == Tuning.DEFAULT else f" ({t.value})")
        lines.append(f"| {trace.value} | {name} | {o.spec.budget.describe()} | "
                     f"{b.layout.label if b else 'none'} | {_num(b.max_rate if b else 0, '.1f')}"
                     f" | {_num(b.cost_per_hour_usd if b else None, '.0f')} | "
                     f"{_num(b.power_w / 1e3 if b else None, '.0f')} | {o.probes} |")
  return lines


def _seconds(x: float) -> str:
  return f"{x:g} s"


def length_table(checks: Sequence[LengthCheck]) -> list[str]:
  """Per trace, max rate per layout at each probe duration, and the ratios the
  claims use."""
  if not checks:
    return ["(not run)"]
  lines = []
  for trace, mine, lengths, rate in _per_trace(checks):
    lines += [f"{trace.value} trace:", "",
              "| design | layout | " + " | ".join(f"max req/s, {_seconds(n)} probes"
                                                 for n in lengths)
              + " |", "|---|---|" + "---|" * len(lengths)]
    for c in mine:
      if c.duration_s == lengths[0]:
        lines.append(f"| {c.design.label} | {c.layout.label} | " + " | ".join(
            _num(rate.get((c.design, n)), ".1f") for n in lengths) + " |")
    for a, b in _LENGTH_RATIOS:
      ratios = [rate[(a, n)] / rate[(b, n)] if rate.get((a, n)) and rate.get((b, n)) else None
                for n in lengths]
      lines.append(f"| {a.label} / {b.label} | ratio | " + " | ".join(
          _num(r) for r in ratios) + " |")
    lines.append("")
  return lines[:-1]


_LENGTH_RATIOS = ((PaperDesign.SPLITWISE_AA, PaperDesign.BASELINE_A100),
                  (PaperDesign.SPLITWISE_HH, PaperDesign.BASELINE_H100))


def _per_trace(checks: Sequence[LengthCheck]):
  """Per trace (in order of appearance): its checks, their sorted durations (s)
  and (design, duration) -> max rate (req/s)."""
  for trace in dict.fromkeys(c.trace for c in checks):
    mine = [c for c in checks if c.trace == trace]
    yield (trace, mine, sorted({c.duration_s for c in mine}),
           {(c.design, c.duration_s): c.max_rate for c in mine})


def length_verdict(claims: Sequence[Claim], reruns: Mapping[Variant, Sequence[Claim]],
                   checks: Sequence[LengthCheck]) -> list[str]:
  """One sentence: how far probe duration moves the ratios on each trace vs the
  largest move of a switched modeling difference on any claim (relative change
  of our value)."""
  moves = []
  for trace, _, lengths, rate in _per_trace(checks):
    for a, b in _LENGTH_RATIOS:
      r = [rate.get((a, n), 0) / rate[(b, n)] for n in lengths if rate.get((b, n))]
      if len(r) == len(lengths) >= 2 and r[0] > 0:
        moves.append(f"{trace.value}, {_seconds(lengths[0])} -> {_seconds(lengths[-1])}: "
                     f"{a.label} / {b.label} {r[0]:.2f} -> {r[-1]:.2f} "
                     f"({r[-1] / r[0] - 1:+.0%})")
  if not moves:
    return []
  switched = [abs(x.our_value / c.our_value - 1) for v in reruns for x in reruns[v]
              for c in claims if x.key == c.key and c.our_value and x.our_value is not None]
  biggest = f"{max(switched):.0%}" if switched else "n/a (no reruns)"
  return [f"Longer probes move the ratios by: {'; '.join(moves)}. The largest change of any "
          f"claim's value from a switched modeling difference: {biggest}."]


def fixed_split_lines(fixed: Sequence[FixedSplitCheck]) -> list[str]:
  """The HHcap claim recomputed with the paper's split held fixed (lowest over traces)."""
  if not fixed:
    return []
  parts, ratios = [], []
  for f in fixed:
    if f.layout is None:
      parts.append(f"{f.trace.value}: no scale up to 1.5x serves {f.rate:.1f} req/s")
      continue
    ratio = f.ratio
    ratios.append(ratio)
    parts.append(f"{f.trace.value}: {f.layout.label} serves {f.rate:.1f} req/s at "
                 f"{f.power_w / 1e3:.0f} kW ({ratio:.2f}x)")
  low = f"{min(ratios):.2f}x power (lowest over traces)" if ratios else "no value"
  return [f"The HHcap claim with the split held at the paper's {HHCAP_PAPER_SPLIT[0]} prompt : "
          f"{HHCAP_PAPER_SPLIT[1]} capped token machines (scaled by tenths; our search picks "
          f"any split): {low}; {'; '.join(parts)}.", ""]


def render_report(claims: Sequence[Claim], reruns: Mapping[Variant, Sequence[Claim]],
                  outcomes: Outcomes, settings: RunSettings, figures: Sequence[str],
                  header: Sequence[str] = (), checks: Sequence[LengthCheck] = (),
                  fixed: Sequence[FixedSplitCheck] = ()) -> str:
  """The markdown report: claims, reruns of the deviating ones, every winner."""
  out = ["# Splitwise (ISCA 2024) headline claims, reproduced by simulation", "", *header, "",
         "## Claims", "", *claims_table(claims), "",
         f"## Where we differ by more than {settings.deviation:.0%}", "",
         "Each deviating claim recomputed with one modeling difference switched to the "
         "paper simulator's: the searches it depends on rerun on the trace its value comes "
         "from. A claim takes the best (or, where marked, the lowest) value over traces, so a "
         "rerun value is a lower (upper) bound on the claim under that switch: a switch whose "
         "bound stays as far from the paper's value, on the same side, does not explain the "
         f"gap. A move within {settings.resolution:.0%} (a ratio of two max rates, each "
         f"a {settings.tolerance:.0%} lattice point) is within the searches' resolution.", "",
         *reruns_table(claims, reruns, settings.deviation, settings.resolution), "",
         *fixed_split_lines(fixed),
         "Not switchable (not measured): the power budget left unenforced at run time "
         "(both simulators only size clusters by GPU power).",
         "", "## Probe length", "",
         "Max rates come from Poisson probes of at least "
         + ", ".join(f"{_seconds(settings.duration_s(t))} ({t.value})" for t in settings.traces)
         + f" of arrivals (and {settings.requests} requests), judged on the requests arriving "
         f"from {settings.measure_from:.0%} to {settings.measure_to:.0%} of that span: queues "
         "fill at the start and drain at the end, and a conversation request decodes for "
         "tens of seconds, so too short a probe flatters Splitwise (a code request's output "
         "is short, so its probes can be shorter). The same layouts with longer probes (the "
         "layouts are the searches' iso-power winners, not searched again):", "",
         *length_table(checks), "", *length_verdict(claims, reruns, checks), "",
         "## Every design's winner", "", *designs_table(outcomes, settings), "",
         "## Figures", "", *[f"- ![{f}]({f})" for f in figures], ""]
  return "\n".join(out)
