"""Simulate a cluster serving a workload, driving the real scheduling policies.

  python scripts/simulate.py --config configs/sim/splitwise_hh.py --output_dir runs/sim_hh

Writes DIR/summary.json (the schema of scripts/serve.py plus ``slowdown`` and
``slo``: latencies against the same requests alone on the SLO reference machine,
and the paper's nine SLOs; ``instances``: busy fraction per home pool, by
phase and over time; ``energy``: energy, cost and power by instance, phase and
request, see splitjax/accounting.py), DIR/requests.csv, DIR/timeline.csv and DIR/timing.json
(this process's wall-clock times; summary.json is byte-identical on a re-run),
and prints the same table and the SLO verdict. No jax is imported.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

# The simulator runs on one thread: OpenBLAS worker threads (started when numpy
# is imported) would only spin on other cores (~4% of the process's CPU time).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# One simulation, then exit: the few reference cycles imports and config parsing
# leave (hundreds of objects; the simulation itself makes none) are not worth the
# cyclic collector's passes over everything the run keeps alive.
gc.disable()

from absl import app, flags  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "sim", "splitwise_hh.py"),
                            "Simulation config file.")
_OUTPUT = flags.DEFINE_string("output_dir", "runs/sim", "Where the result files go.")
_REQUESTS = flags.DEFINE_bool("write_requests", True, "Write requests.csv (one row per request).")


def main(argv):
  del argv
  t0 = time.perf_counter()
  from splitjax import accounting, report, workload
  from splitjax.config import ConfigError, from_config_dict
  from splitjax.metrics import write_requests_csv, write_timeline_csv
  from splitjax.sim import slo
  from splitjax.sim.build import build
  from splitjax.sim.hardware import HardwareError
  from splitjax.sim.perf_model import PerfModelError
  from splitjax.sim.sim_config import SimConfig

  try:
    cfg = from_config_dict(SimConfig, _CONFIG.value)
    sim, specs = build(cfg)
    reference = slo.reference_perf_model(cfg)
  except (ConfigError, workload.TraceError, HardwareError, PerfModelError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  ledger = accounting.simulator_ledger(sim)
  sim.work_observers.append(ledger.observe_works)
  t1 = time.perf_counter()
  result = sim.run(specs)
  t2 = time.perf_counter()
  out = Path(_OUTPUT.value)
  out.mkdir(parents=True, exist_ok=True)

  def write_tables():
    if _REQUESTS.value:
      write_requests_csv(result.records, out / "requests.csv")
    write_timeline_csv(result.timeline, out / "timeline.csv")

  # The per-request and timeline tables are written on the other core while
  # this process checks the SLOs and writes the summary.
  tables_written = cli.in_background(write_tables)
  slos = slo.check(slo.slowdowns(result.records, reference), cfg.slo)
  energy = ledger.account(result.summary.wall_s, result.records)
  t3 = time.perf_counter()
  summary = result.to_dict()
  summary["slowdown"], summary["slo"] = slos.slowdown_dict(), slos.slo_dict()
  summary["simulation"] = {"events": sim.events, "leap": cfg.leap}
  summary["energy"] = energy.to_dict()
  # summary.json is a function of the config (byte-identical on a re-run);
  # wall-clock timings of this process go to timing.json.
  (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  (out / "timing.json").write_text(json.dumps(
      {"setup_s": t1 - t0, "run_s": t2 - t1, "slo_s": t3 - t2}, indent=2))
  tables_written()
  print(f"{cfg.model.name} on {len(sim.coord.instances)} instances, policy "
        f"{cfg.scheduler.policy.value}{' + mixed pool' if cfg.scheduler.mixed_pool else ''}; "
        f"{len(specs)} requests over {max((s.arrival_s for s in specs), default=0):.0f} s")
  print(report.summary_table(summary))
  print(f"{slos.line()} (vs alone on {cfg.slo.reference_hardware})")
  print(energy.line())
  print(f"simulated {sim.events} events in {t2 - t1:.2f} s (setup {t1 - t0:.2f} s); "
        f"wrote {out}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
