"""Find the cluster to buy: the layout (prompt / token or co-located machine counts
and kinds) that serves the most requests per second within a power or cost
budget, or the cheapest (lowest-power) one serving a required rate, all nine
SLOs met, by simulation (``splitjax.provision``).

  python scripts/provision.py --config configs/provision/hh_iso_power.py --output_dir runs/prov_hh
  python scripts/provision.py --config configs/provision/code_cost_optimal.py --workers 1

Prints a line per evaluated layout, then a table (machines, kinds, cost $/h,
power kW, max rate req/s, req/s per $/h, req/s per kW) and the winner; writes
DIR/results.json (a function of the config: identical on a re-run) and
DIR/timing.json. Every probe's outcome is cached under --cache_dir, so a re-run
is instant. No jax is imported.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "provision", "hh_iso_power.py"),
                            "Provisioning config file (configs/provision/*.py).")
_OUTPUT = flags.DEFINE_string("output_dir", "runs/provision", "Where results.json goes.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes evaluating layouts (0: one per CPU).")
_CACHE = flags.DEFINE_string("cache_dir", cli.repo_path(".cache", "provision"),
                             "Probe outcome cache ('' disables it).")


def table(result) -> str:
  """The evaluated layouts, one line each; '*' marks the winner."""
  from splitjax.provision import Design, EvalMode
  pools = ("prompt", "token") if result.design == Design.SPLIT else ("colocated",)
  lines = ["  " + " ".join(f"{p:<18}" for p in pools) + f" {'$/h':>8} {'kW':>7} "
           f"{'max req/s':>10} {'req/s/($/h)':>11} {'req/s/kW':>9} {'probes':>6}"]
  for r in result.rows:
    if r.mode == EvalMode.MAX_RATE:
      rate = f"{r.max_rate:.1f}"
    elif r.mode == EvalMode.BOUNDS:      # compared with a better layout only
      rate = f"<{r.rates.upper:.1f}"
    else:
      rate = f"{'>=' if r.feasible else '<'}{r.rates.probes[0].rate:g}"
    exact = r.feasible and r.mode == EvalMode.MAX_RATE
    per = lambda x: f"{x:.3f}" if exact and math.isfinite(x) else "-"
    machines = " ".join(f"{p.machines:>3} {p.kind:<14}" for p in r.layout.pools)
    lines.append(f"{'*' if r is result.best else ' '} {machines} "
                 f"{r.price.cost_per_hour_usd:>8.1f} {r.price.power_w / 1e3:>7.1f} {rate:>10} "
                 f"{per(r.rate_per_cost):>11} {per(r.rate_per_kw):>9} "
                 f"{len(r.rates.probes):>6}")
  return "\n".join(lines)


def winner_line(result) -> str:
  b = result.best
  if b is None:
    return f"no {result.design.value} layout meets the SLOs ({result.budget.describe()})"
  return (f"winner ({result.budget.describe()}): {b.layout.label}, max {b.max_rate:.1f} req/s, "
          f"{b.price.cost_per_hour_usd:.1f} $/h, {b.price.power_w / 1e3:.1f} kW")


def main(argv):
  del argv
  t0 = time.perf_counter()
  from splitjax import workload
  from splitjax.config import ConfigError, from_config_dict, to_plain_dict
  from splitjax.provision import (BudgetKind, ProvisionConfig, ProvisionError, SimProbe,
                                  budget_layouts, prices, search)
  from splitjax.sim.hardware import HardwareError
  from splitjax.sim.perf_model import PerfModelError

  try:
    cfg = from_config_dict(ProvisionConfig, _CONFIG.value)
    probe = SimProbe.create(cfg.sim, cfg.probe)
    probe.check(_sample_layouts(cfg))
    if cfg.budget.kind != BudgetKind.ISO_THROUGHPUT:      # a budget too small fails here
      budget_layouts(cfg.design, cfg.space, cfg.budget, prices(cfg.space.kinds(cfg.design)))
  except (ConfigError, ProvisionError, workload.TraceError, HardwareError, PerfModelError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  probes = (f"~{cfg.probe.requests} requests" if cfg.probe.requests
            else f"{cfg.probe.duration_s:g} s of arrivals")
  print(f"{cfg.budget.describe()}: {cfg.design.value} layouts of {cfg.sim.model.name} on the "
        f"{cfg.sim.workload.trace} trace; each probe {probes}", flush=True)
  t1 = time.perf_counter()
  try:
    result = search(cfg.design, cfg.space, cfg.budget, probe, bisection=cfg.bisection,
                    workers=_WORKERS.value or None, cache_dir=_CACHE.value or None,
                    progress=lambda line: print(line, flush=True),
                    measure_winner=cfg.measure_winner)
  except ProvisionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t2 = time.perf_counter()
  out = Path(_OUTPUT.value)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(
      {"config": to_plain_dict(cfg), **result.to_dict()}, indent=2, sort_keys=True))
  (out / "timing.json").write_text(json.dumps(
      {"setup_s": t1 - t0, "search_s": t2 - t1, "probes": result.probes}, indent=2))
  print(table(result))
  print(winner_line(result))
  print(f"{len(result.rows)} layouts, {result.probes} probes in {t2 - t1:.1f} s; wrote {out}")
  return 0 if result.best else 1


def _sample_layouts(cfg):
  """Layouts covering every machine kind of the space (for the up-front checks)."""
  from splitjax.provision import Design, Layout, Pool
  s = cfg.space
  s.kinds(cfg.design)                       # ProvisionError if a pool has no kinds
  if cfg.design == Design.COLOCATED:
    return [Layout(colocated=Pool(1, k)) for k in s.colocated_kinds]
  return [Layout(Pool(1, p), Pool(1, t)) for p in s.prompt_kinds for t in s.token_kinds]


if __name__ == "__main__":
  from absl import app
  app.run(main, flags_parser=cli.parse_flags)
