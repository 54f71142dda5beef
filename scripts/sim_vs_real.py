"""The simulator against the real runtime on this machine: profile, serve, simulate, compare.

  python scripts/sim_vs_real.py --output_dir runs/sim_vs_real
  python scripts/sim_vs_real.py --reuse_profiles runs/sim_vs_real \\
      --serve_summary runs/sim_vs_real/serve/summary.json       # re-simulate only
  python scripts/sim_vs_real.py --config.workload.duration_s=15   # any serving override

Steps (the first two are subprocesses of the scripts, logs in DIR/*.log):
1. profile (scripts/profile.py) our engine on one instance mesh of the serving config
   (tp=2, devices 0-1): DIR/profile_solo.csv, the instance alone on the host; then the
   contention probe, ``--concurrent k`` for every k of --concurrency on a few combos:
   DIR/profile_x<k>.csv, the same work on k instances at once.
2. serve (scripts/serve.py) the configured trace slice: DIR/serve/ (summary.json ...).
3. simulate (in process, no jax) the sim config mirroring the serving one
   (configs/sim/cpu_split.py: same instances, slots, KV capacity, scheduler, slice),
   both priced by the solo profile:
   - sim_solo: every instance as if it had the host to itself (what the simulator
     assumes of separate machines);
   - sim_shared_host (contention-aware): the instances' programs run one at a time
     on the host in launch order (:class:`SharedHost`), stepping mode. That is how this
     CPU runs programs of different virtual devices: dispatched together, they finish
     one after another. The probe measures the consequence: k instances doing the
     same work take ~k x as long as one (printed, not used by the simulation).
4. print measured vs simulated (ratio = simulated / measured) for TTFT / TBT p50 / p90,
   E2E and ITL p50, throughput and busy instances; write DIR/sim_vs_real.json.

The 8 virtual devices share 2 cores, so the real instances slow each other down;
the solo profile cannot know that. Whether the machine was quiet (other processes'
CPU before, during every step, after) is printed and recorded.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from splitjax import cli  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "split.py"), "Serving config file.")
_SIM_CONFIG = flags.DEFINE_string("sim_config", cli.repo_path("configs", "sim", "cpu_split.py"),
                                  "Config file whose mirror_serve_config(serve) gives the "
                                  "simulation of the serving config.")
_OUTPUT = flags.DEFINE_string("output_dir", "runs/sim_vs_real", "Where the result files go.")
_REUSE_PROFILES = flags.DEFINE_string("reuse_profiles", None, "Directory with profile_solo.csv "
                                      "and profile_x<k>.csv of an earlier run: skip profiling.")
_SERVE_SUMMARY = flags.DEFINE_string("serve_summary", None, "summary.json of an earlier serve "
                                     "run of the same config: skip serving.")
_PROMPTS = flags.DEFINE_list("prompt_sizes", ["64", "65", "128", "129", "256", "257", "512",
                                              "513", "1024"],
                             "Solo profile prompt sizes; either side of each bucket edge, so "
                             "the interpolated curve steps where the engine pads.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Solo profile batch sizes.")
_TOKENS = flags.DEFINE_integer("token_size", 16, "Tokens per profiled request.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Profile rows per combo.")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["2", "4"], "Instances busy at once in the "
                                 "contention probe.")
_C_PROMPTS = flags.DEFINE_list("contention_prompt_sizes", ["128", "1024"],
                               "Probe prompt sizes (a subset of --prompt_sizes).")
_C_BATCHES = flags.DEFINE_list("contention_batch_sizes", ["1", "16"],
                               "Probe batch sizes (a subset of --batch_sizes).")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Virtual CPU devices (CPU only).")
_WAIT = flags.DEFINE_float("wait_quiet_s", 0.0, "Before each profile / serve step, wait up to "
                           "this many seconds for a quiet machine (then run anyway).")

METRICS = (("TTFT p50 (s)", ("ttft_s", "p50")), ("TTFT p90 (s)", ("ttft_s", "p90")),
           ("TBT p50 (s)", ("tbt_s", "p50")), ("TBT p90 (s)", ("tbt_s", "p90")),
           ("E2E p50 (s)", ("e2e_s", "p50")), ("ITL p50 (s)", ("itl_s", "p50")),
           ("throughput (req/s)", ("throughput", "requests_per_s")),
           ("busy instances (mean)", ("occupancy", "busy_instances", "mean")))


class StepError(RuntimeError):
  """A step (subprocess) failed; the message ends with the tail of its log."""


@dataclasses.dataclass(frozen=True)
class Step:
  """One step: wall seconds, the CPU other processes used meanwhile (cores), and
  seconds spent waiting for a quiet machine before it (--wait_quiet_s)."""
  name: str
  wall_s: float
  other_cores: float
  waited_s: float = 0.0


def _cpu_seconds() -> tuple[float, float]:
  """(CPU seconds the whole machine was busy, CPU seconds of this process and its
  finished children), from /proc/stat and os.times()."""
  with open("/proc/stat") as f:
    ticks = [int(x) for x in f.readline().split()[1:]]
  busy = sum(ticks[:8]) - ticks[3] - ticks[4]     # minus idle and iowait
  t = os.times()
  return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def _wait_quiet(limit_s: float) -> float:
  """Waits until other processes use under benchmarking's quiet threshold of CPU
  over a 2 s window, at most ``limit_s`` seconds; returns the seconds waited."""
  from splitjax.benchmarking import check_quiet
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < limit_s and not check_quiet(2.0).quiet:
    pass
  return time.perf_counter() - t0


def _run_step(name: str, script: str, args: list[str], out: Path) -> Step:
  """``python scripts/<script> args`` from the repository root, output to
  DIR/<name>.log. Raises StepError with the log's tail if it fails."""
  log = out / f"{name}.log"
  waited = _wait_quiet(_WAIT.value) if _WAIT.value > 0 else 0.0
  print(f"[{name}] scripts/{script} ... (log: {log})"
        + (f" after waiting {waited:.0f} s for a quiet machine" if waited >= 2.5 else ""),
        flush=True)
  (busy0, own0), t0 = _cpu_seconds(), time.perf_counter()
  with log.open("w") as f:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                          stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
  (busy1, own1), wall = _cpu_seconds(), time.perf_counter() - t0
  if proc.returncode != 0:
    tail = "\n".join(log.read_text().splitlines()[-15:])
    raise StepError(f"{name} failed (exit {proc.returncode}); end of {log}:\n{tail}")
  step = Step(name, wall, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, waited)
  print(f"[{name}] done in {wall:.0f} s; other processes used {step.other_cores:.2f} cores",
        flush=True)
  return step


def _config_args() -> list[str]:
  """--config FILE and its --config.* overrides, to hand to the other scripts."""
  from ml_collections import config_flags
  flag = flags.FLAGS["config"]
  args = ["--config", config_flags.get_config_filename(flag)]
  for path, value in sorted(config_flags.get_override_values(flag).items()):
    args.append(f"--config.{path}={value!r}" if isinstance(value, tuple)
                else f"--config.{path}={value}")
  return args


def _profile(out: Path, sim_cfg, budget: int) -> tuple[list[Step], Path, dict[int, Path]]:
  """Runs (or reuses) the solo profile and the contention probe; returns the
  steps run, the solo CSV and {k: probe CSV}."""
  from splitjax.sim.hardware import get_hardware
  src = Path(_REUSE_PROFILES.value) if _REUSE_PROFILES.value else out
  solo = src / "profile_solo.csv"
  probes = {k: src / f"profile_x{k}.csv" for k in _sizes(_CONCURRENCY.value, "--concurrency")}
  if _REUSE_PROFILES.value:
    missing = [str(p) for p in (solo, *probes.values()) if not p.exists()]
    if missing:
      raise StepError(f"--reuse_profiles: missing {', '.join(missing)}")
    return [], solo, probes
  for probe, grid, what in ((_C_PROMPTS, _PROMPTS, "prompt_sizes"),
                            (_C_BATCHES, _BATCHES, "batch_sizes")):
    if not set(_sizes(probe.value, f"--contention_{what}")) <= set(_sizes(grid.value, f"--{what}")):
      raise StepError(f"--contention_{what} must be a subset of --{what} (the probe is "
                      f"compared with the solo profile's same combos)")
  hw = get_hardware(sim_cfg.cluster.prompt.hardware)
  common = [*_config_args(), f"--num_cpu_devices={_DEVICES.value}",
            f"--token_size={_TOKENS.value}", f"--repeats={_REPEATS.value}",
            f"--max_batch_tokens={budget}", f"--hardware={hw.device_name}",
            f"--tensor_parallel={hw.devices_per_machine}"]
  steps = [_run_step("profile_solo", "profile.py", [
      *common, f"--prompt_sizes={','.join(_PROMPTS.value)}",
      f"--batch_sizes={','.join(_BATCHES.value)}", f"--output_csv={solo}"], out)]
  for k, path in probes.items():
    steps.append(_run_step(f"profile_x{k}", "profile.py", [
        *common, f"--concurrent={k}", f"--prompt_sizes={','.join(_C_PROMPTS.value)}",
        f"--batch_sizes={','.join(_C_BATCHES.value)}", f"--output_csv={path}"], out))
  return steps, solo, probes


def _sizes(items, what: str) -> tuple[int, ...]:
  from splitjax.profiling import parse_sizes
  return parse_sizes(items, what)


def _read_profile(path: Path) -> dict[tuple[int, int], tuple[float, float]]:
  """(prompt_size, batch_size) -> (median prompt_time ms, median token_time ms)."""
  rows: dict[tuple[int, int], list[tuple[float, float]]] = {}
  with path.open(newline="") as f:
    for r in csv.DictReader(f):
      key = (int(r["prompt_size"]), int(r["batch_size"]))
      rows.setdefault(key, []).append((float(r["prompt_time"]), float(r["token_time"])))
  return {k: (statistics.median(p for p, _ in v), statistics.median(t for _, t in v))
          for k, v in rows.items()}


def contention_factors(solo: dict, probes: dict[int, dict]) -> dict[str, dict[int, float]]:
  """{"prefill" | "decode": {k: slowdown}}: geometric mean over the probe's combos of
  its time with k instances busy / the solo time of the same combo; k=1 -> 1."""
  out = {"prefill": {1: 1.0}, "decode": {1: 1.0}}
  for k, probe in sorted(probes.items()):
    missing = sorted(set(probe) - set(solo))
    if missing:
      raise StepError(f"the contention probe's combos {missing} are not in the solo profile "
                      f"(--contention_* sizes must be a subset of --prompt_sizes / --batch_sizes)")
    for i, phase in enumerate(("prefill", "decode")):
      logs = [math.log(probe[c][i] / solo[c][i]) for c in probe]
      out[phase][k] = math.exp(sum(logs) / len(logs))
  return out


class SharedHost:
  """One host running the programs of all its instances one at a time, in launch
  order (first in, first out), each for its solo time: what this CPU does with
  programs of different virtual devices (measured: 4 decode steps dispatched
  together on 4 meshes finish one after another, not together)."""

  def __init__(self):
    self.free_at = 0.0     # when the last launched program ends, simulated seconds
    self.programs = 0

  def run(self, now: float, seconds: float) -> float:
    """Seconds from ``now`` until a program of ``seconds`` launched at ``now`` ends."""
    self.programs += 1
    self.free_at = max(now, self.free_at) + seconds
    return self.free_at - now


@dataclasses.dataclass
class HostQueuedPerf:
  """A PerfModel whose programs queue on a :class:`SharedHost`: each call prices
  one launched iteration (the simulator's stepping mode, leap=False) and returns
  its wait behind earlier programs plus its own ``inner`` time, seconds."""
  inner: object
  host: SharedHost
  clock: Callable[[], float]

  def prefill_time(self, prompt_lens) -> float:
    return self.host.run(self.clock(), self.inner.prefill_time(prompt_lens))

  def decode_time(self, context_lens) -> float:
    return self.host.run(self.clock(), self.inner.decode_time(context_lens))

  def decode_step_time(self, batch: int, context_sum: int) -> float:
    return self.host.run(self.clock(), self.inner.decode_step_time(batch, context_sum))

  def decode_step_times(self, batch, context_sums):
    raise NotImplementedError("a shared host prices one iteration at a time: leap=False")

  def mixed_time(self, context_lens, chunks) -> float:
    return self.host.run(self.clock(), self.inner.mixed_time(context_lens, chunks))

  def power_w(self, phase) -> float:
    return self.inner.power_w(phase)


def _simulate(sim_dict, profile_csv: Path, out: Path, shared_host: bool) -> dict:
  """Simulates priced by ``profile_csv`` (instances on one :class:`SharedHost` if
  ``shared_host``); writes out/summary.json and requests.csv; returns the summary."""
  from splitjax.config import from_config_dict
  from splitjax.metrics import write_requests_csv
  from splitjax.sim.build import build
  from splitjax.sim.sim_config import SimConfig
  d = sim_dict.copy_and_resolve_references()
  d.cluster.profile_path = str(profile_csv)
  d.leap = d.leap and not shared_host
  sim, specs = build(from_config_dict(SimConfig, d))
  host = SharedHost()
  if shared_host:
    for name, perf in list(sim.perf.items()):
      sim.perf[name] = HostQueuedPerf(perf, host, lambda: sim.now)
  result = sim.run(specs)
  if shared_host and host.programs == 0:
    raise StepError("the shared-host simulation never priced a program through the host "
                    "(the simulator no longer reads Simulator.perf per launch)")
  summary = result.to_dict()
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
  write_requests_csv(result.records, out / "requests.csv")
  return summary


def _serve(out: Path) -> tuple[list[Step], Path]:
  """Runs (or reuses) the serve replay; returns the steps run and its summary.json."""
  if _SERVE_SUMMARY.value:
    path = Path(_SERVE_SUMMARY.value)
    if not path.exists():
      raise StepError(f"--serve_summary: {path} does not exist")
    return [], path
  step = _run_step("serve", "serve.py", [
      *_config_args(), f"--num_cpu_devices={_DEVICES.value}", "--progress=false",
      f"--output_dir={out / 'serve'}"], out)
  return [step], out / "serve" / "summary.json"


def _value(summary: dict, path: tuple[str, ...]) -> float:
  for key in path:
    summary = summary[key]
  return float(summary)


def comparison(measured: dict, sims: dict[str, dict]) -> list[dict]:
  """One row per metric: measured, then each simulation's value and its ratio
  (simulated / measured)."""
  rows = []
  for label, path in METRICS:
    row = {"metric": label, "measured": _value(measured, path)}
    for name, s in sims.items():
      row[name] = _value(s, path)
      row[f"{name}_ratio"] = row[name] / row["measured"] if row["measured"] else float("nan")
    rows.append(row)
  return rows


def _print_table(rows: list[dict], sims: list[str]) -> None:
  head = f"{'metric':<20}{'measured':>10}" + "".join(f"{n:>16}{'ratio':>7}" for n in sims)
  print(head)
  for r in rows:
    print(f"{r['metric']:<20}{r['measured']:>10.3f}"
          + "".join(f"{r[n]:>16.3f}{r[n + '_ratio']:>7.2f}" for n in sims))


def _load_sim_dict(serve_dict):
  """The sim config module's mirror_serve_config(serve_dict)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("sim_config_file", _SIM_CONFIG.value)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.mirror_serve_config(serve_dict)


def _check_same_workload(measured: dict, sim: dict) -> None:
  n, m = measured["requests"]["submitted"], sim["requests"]["submitted"]
  if n != m:
    raise StepError(f"the serve run had {n} requests, the simulation {m}: not the same "
                    f"slice (was --serve_summary from another config?)")


def _machine_report(before, after, steps: list[Step]) -> dict:
  """Quiet-machine verdict: checks before / after and other processes' CPU
  during every step (benchmarking.QuietCheck's threshold)."""
  from splitjax.benchmarking import QuietCheck
  during = [QuietCheck(s.other_cores, s.wall_s, before.cores) for s in steps]
  for s, q in zip(steps, during):
    print(q.describe().replace("machine check", f"machine check during {s.name}"))
  print(after.describe().replace("machine check", "machine check after"))
  checks = [before, *during, after]
  return {"quiet": all(q.quiet for q in checks) if steps else None,
          "before_other_cores": before.other_cores, "after_other_cores": after.other_cores,
          "steps": [dataclasses.asdict(s) for s in steps]}


def _run(out: Path) -> dict:
  """Every step; returns the JSON report."""
  from splitjax import benchmarking as bm
  from splitjax.config import from_config_dict
  from splitjax.serve_config import ServeConfig
  from splitjax.sim.sim_config import SimConfig
  serve_cfg = from_config_dict(ServeConfig, _CONFIG.value)
  sim_dict = _load_sim_dict(_CONFIG.value)
  sim_cfg = from_config_dict(SimConfig, sim_dict)
  before = bm.check_quiet()
  print(before.describe().replace("machine check", "machine check before"), flush=True)
  profile_steps, solo_csv, probe_csvs = _profile(out, sim_cfg,
                                                 serve_cfg.scheduler.prompt_token_budget)
  serve_steps, serve_summary = _serve(out)
  after = bm.check_quiet(1.0)
  factors = contention_factors(_read_profile(solo_csv),
                               {k: _read_profile(p) for k, p in probe_csvs.items()})
  measured = json.loads(serve_summary.read_text())
  sims = {"sim_solo": _simulate(sim_dict, solo_csv, out / "sim_solo", shared_host=False),
          "sim_shared_host": _simulate(sim_dict, solo_csv, out / "sim_shared_host",
                                       shared_host=True)}
  _check_same_workload(measured, sims["sim_solo"])
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "config": _config_args(), "requests": measured["requests"],
          "machine": _machine_report(before, after, profile_steps + serve_steps),
          "profiles": {"solo": str(solo_csv),
                       "probes": {k: str(p) for k, p in probe_csvs.items()}},
          "contention_slowdown": factors, "table": comparison(measured, sims),
          "measured": measured, "simulated": sims, "serve_summary": str(serve_summary)}


def _print_report(report: dict) -> None:
  c = report["contention_slowdown"]
  fmt = lambda d: ", ".join(f"k={k}: {v:.2f}x" for k, v in sorted(d.items()))
  print(f"\ncontention probe, the same work on k instances at once, time until all are done "
        f"/ alone: prefill {fmt(c['prefill'])}; decode {fmt(c['decode'])}")
  r, quiet = report["requests"], report["machine"]["quiet"]
  verdict = ("no profile / serve step ran here" if quiet is None
             else "quiet" if quiet else "BUSY (timings unreliable)")
  print(f"{r['submitted']} requests, {r['completed']} completed in the serve run; "
        f"machine: {verdict}\n")
  _print_table(report["table"], list(report["simulated"]))
  print("sim_solo: every instance priced by the solo profile as if it had the host to itself; "
        "sim_shared_host: the same profile, but all instances' programs run one at a time on "
        "the host in launch order (FIFO); ratio = simulated / measured")


def main(argv):
  del argv
  from splitjax import workload
  from splitjax.config import ConfigError
  from splitjax.sim.hardware import HardwareError
  from splitjax.sim.perf_model import PerfModelError
  out = Path(_OUTPUT.value)
  out.mkdir(parents=True, exist_ok=True)
  try:
    report = _run(out)
  except (StepError, ConfigError, workload.TraceError, HardwareError, PerfModelError,
          ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  (out / "sim_vs_real.json").write_text(json.dumps(report, indent=2))
  _print_report(report)
  print(f"wrote {out / 'sim_vs_real.json'}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
