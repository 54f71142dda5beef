"""Simulator speed: whole scripts/simulate.py processes, timed, with peak memory.

  python scripts/bench_sim.py                      # the three cases below
  python scripts/bench_sim.py --cases conv_hh,conv_hh_rate80 --repeats 3

Cases (Splitwise-HH, configs/sim/splitwise_hh.py: 40 DGX-H100, Llama2-70B):

  conv_hh          the whole one-hour conversation trace (19,366 requests)   target < 2 s
  conv_hh_rate80   as many requests, Poisson at 80 req/s (a loaded cluster)  target < 5 s
  conv_hh_rate80_mixed  the same with decode batches capped at 32: token
                   slots bind, so the mixed pool is busy (~13 of 40 borrowed) target < 5 s
  synthetic_1m     ~1,000,000 requests, Poisson at 80 req/s for 12,500 s     must finish

Each case is one ``simulate.py`` process (interpreter start, trace reading,
simulation, SLO check and writing every output file), timed from the outside,
with the package's bytecode compiled ahead (``compileall``, as an install does);
its peak resident memory comes from the kernel (``wait4``). Reported: wall
seconds (best of ``--repeats``), requests simulated per wall second, peak RSS,
and the split of the time reported by the process itself (timing.json). The
machine is shared, so a quiet-machine check runs before and after and is
printed; results are written to ``--output_json``. A benchmark, not a test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from splitjax import benchmarking as bm  # noqa: E402
from splitjax import cli  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple[str, ...]
  target_s: float | None          # None: must finish


CASES = (
    Case("conv_hh", (), 2.0),
    Case("conv_hh_rate80", ("--config.workload.rate=80",), 5.0),
    Case("conv_hh_rate80_mixed", ("--config.workload.rate=80", "--config.cluster.max_batch=32"),
         5.0),
    Case("synthetic_1m", ("--config.workload.rate=80", "--config.workload.rate_duration_s=12500",
                          "--write_requests=false"), None),
)

_OUT = flags.DEFINE_string("output_json", "bench_results/bench_sim.json", "JSON output.")
_CONFIG = flags.DEFINE_string("config", str(ROOT / "configs" / "sim" / "splitwise_hh.py"),
                              "Simulation config every case starts from.")
_CASES = flags.DEFINE_list("cases", [c.name for c in CASES], "Cases to run.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs per case (best wall time is reported).")
_REQUIRE_QUIET = flags.DEFINE_bool("require_quiet", False, "Abort if the machine is busy.")


def run_case(case: Case, out_dir: Path) -> dict:
  """One simulate.py process: wall seconds, peak RSS (bytes), its own timings."""
  cmd = [sys.executable, str(ROOT / "scripts" / "simulate.py"), f"--config={_CONFIG.value}",
         f"--output_dir={out_dir}", *case.args]
  out_dir.mkdir(parents=True)
  with open(out_dir / "stdout.txt", "w") as so, open(out_dir / "stderr.txt", "w") as se:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=so, stderr=se)
    _, status, usage = os.wait4(proc.pid, 0)        # this child's own peak RSS
    wall = time.perf_counter() - t
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    err = (out_dir / "stderr.txt").read_text()
    raise RuntimeError(f"{case.name} failed ({proc.returncode}):\n{err[-2000:]}")
  peak_kib = usage.ru_maxrss
  out = (out_dir / "stdout.txt").read_text()
  summary = json.loads((out_dir / "summary.json").read_text())
  timing = json.loads((out_dir / "timing.json").read_text())
  return dict(wall_s=wall, peak_rss_bytes=peak_kib * 1024, timing=timing,
              requests=summary["requests"]["submitted"],
              completed=summary["requests"]["completed"],
              events=summary["simulation"]["events"],
              mixed_pool=summary["mixed_pool"], slo_met=summary["slo"]["met"],
              last_line=out.strip().splitlines()[-1])


def main(argv):
  del argv
  names = {c.name: c for c in CASES}
  unknown = [n for n in _CASES.value if n not in names]
  if unknown:
    print(f"error: unknown cases {unknown}; known: {list(names)}", file=sys.stderr)
    return 2
  # Every case is a fresh process: compile the package's bytecode once first,
  # as installing a package does, so no case pays for compiling its sources
  # (which happens on every run where bytecode is not written, e.g. under
  # PYTHONDONTWRITEBYTECODE=1).
  subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "splitjax")],
                 check=True, stdout=subprocess.DEVNULL)
  print("bytecode of splitjax/ compiled ahead (python -m compileall)")
  before = bm.check_quiet()
  print(before.describe())
  if _REQUIRE_QUIET.value and not before.quiet:
    print("error: machine is busy (--require_quiet)", file=sys.stderr)
    return 1
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in _CASES.value:
      case = names[name]
      runs = [run_case(case, Path(tmp) / f"{name}{k}") for k in range(_REPEATS.value)]
      best = min(runs, key=lambda r: r["wall_s"])
      best["requests_per_wall_s"] = best["requests"] / best["wall_s"]
      best["target_s"] = case.target_s
      best["met"] = (best["completed"] == best["requests"] if case.target_s is None
                     else best["wall_s"] < case.target_s)
      rows.append(dict(case=name, **best))
      print(f"  {name}: {best['wall_s']:.2f} s, {best['requests']} requests")
  after = bm.check_quiet(1.0)
  print(after.describe())
  print(f"{'case':20} {'requests':>9} {'events':>9} {'wall s':>7} {'run s':>7} "
        f"{'req/wall s':>10} {'peak MiB':>9} {'target':>7} {'met':>4}")
  for r in rows:
    target = "finish" if r["target_s"] is None else f"<{r['target_s']:.0f} s"
    print(f"{r['case']:20} {r['requests']:9d} {r['events']:9d} {r['wall_s']:7.2f} "
          f"{r['timing']['run_s']:7.2f} {r['requests_per_wall_s']:10.0f} "
          f"{r['peak_rss_bytes'] / 2 ** 20:9.0f} {target:>7} {'yes' if r['met'] else 'NO':>4}")
  results = dict(machine=dict(before=dataclasses.asdict(before) | {"quiet": before.quiet},
                              after=dataclasses.asdict(after) | {"quiet": after.quiet},
                              cpu_count=os.cpu_count()),
                 config=_CONFIG.value, cases=rows)
  bm.write_results(_OUT.value, results)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
