"""Replay a workload through a serving cluster and report latency, throughput, transfers.

  python scripts/serve.py --config configs/split.py --output_dir runs/split
  python scripts/serve.py --config configs/colocated.py --config.workload.rate_scale=2

Writes DIR/summary.json, DIR/requests.csv (one row per request), DIR/token_times.jsonl
(every token's time per request), DIR/timeline.csv (pool occupancy over time) and
DIR/config.json, and prints a table.
``--checkpoint DIR`` loads a Hugging Face Llama or splitjax checkpoint; without it the
config's preset gets random weights (prompts are random ids, outputs forced to the
trace's lengths, as in the Splitwise paper).

  python scripts/serve.py --config configs/split.py --http_port 8000

serves the cluster over HTTP instead (OpenAI-compatible /v1/completions, /v1/models,
/health, /metrics; the ``server`` extra) until interrupted, then writes DIR/summary.json and
DIR/requests.csv of the requests it served; the workload is not used.
Text prompts use the checkpoint's tokenizer.json, else UTF-8 bytes as token ids.

  python scripts/launch_local.py -n 2 -- scripts/serve.py --config configs/split.py

replays the workload with the prompt instances in some processes and the token
instances in others (``splitjax.distributed.serving``; ``--process_pools`` or
``--config.cluster.process_pools`` says which pool each process serves, default
first half prompt, rest token). Every
process runs this program; process 0 runs the policy, prints and writes the
files. A dead or stopped process ends the job (exit code 3) naming it and the
requests in flight on it; the files still hold every finished request. With
``--http_port`` process 0 serves HTTP and its engine drives every process;
Ctrl-C on the launcher stops process 0's server, which then stops the others.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402
from splitjax.distributed import launch  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "split.py"), "Serving config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF Llama dir or splitjax checkpoint dir.")
_OUTPUT = flags.DEFINE_string("output_dir", "runs/serve", "Where the result files go.")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Virtual CPU devices (CPU only).")
_WARMUP = flags.DEFINE_bool("warmup", True, "Compile the workload's programs before the clock "
                            "starts.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
_HTTP_PORT = flags.DEFINE_integer("http_port", None, "Serve over HTTP on this port instead of "
                                  "replaying the workload.")
_HTTP_HOST = flags.DEFINE_string("http_host", "127.0.0.1", "Address the HTTP server binds.")
_MAX_WAITING = flags.DEFINE_integer("max_waiting", 64, "HTTP: accepted requests without a "
                                    "first token before new ones get 429.")
_MAX_OPEN = flags.DEFINE_integer("max_open", 256, "HTTP: unfinished requests before new ones "
                                 "get 429.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "HTTP: the model id clients send "
                                  "(default: the config's model name).")
_HARDWARE = flags.DEFINE_string("hardware", "cpu-host", "HTTP: catalog machine whose power and "
                                "price the energy / cost counters use ('' for none).")
_DIST = launch.define_flags()
_POOLS = flags.DEFINE_string("process_pools", None, "Multi-process: pool of each process, e.g. "
                             "'prompt,token,token' (default: the config's "
                             "cluster.process_pools, else first half prompt, rest token).")
_WAIT = flags.DEFINE_float("wait_timeout_s", 300.0, "Multi-process: longest wait on another "
                           "process that is alive.")
_FAULT_PROCESS = flags.DEFINE_integer("fault_process", None, "Testing, multi-process: this "
                                      "process (not 0) kills itself (SIGKILL) after "
                                      "--fault_after_ops ops of the replay.")
_FAULT_OPS = flags.DEFINE_integer("fault_after_ops", 10, "Testing: see --fault_process.")
FAILED_EXIT = 3
_CACHE = flags.DEFINE_string("compilation_cache_dir", cli.repo_path(".cache", "jax"),
                             "Persistent XLA compilation cache ('' to disable): a re-run "
                             "skips compiling.")


class Progress:
  """Requests ended / total and elapsed time: one self-overwriting line on a
  terminal, a line per 10% otherwise (logs, pipes)."""

  def __init__(self, enabled: bool):
    self.enabled, self.t0 = enabled, time.perf_counter()
    self.tty, self.shown = sys.stderr.isatty(), -1

  def __call__(self, ended: int, total: int) -> None:
    if not self.enabled or total == 0:
      return
    width = 30
    fill = int(width * ended / total)
    line = (f"[{'#' * fill}{'.' * (width - fill)}] {ended}/{total} requests "
            f"{time.perf_counter() - self.t0:6.1f}s")
    if self.tty:
      sys.stderr.write("\r" + line + ("\n" if ended == total else ""))
    elif 10 * ended // total > self.shown:
      self.shown = 10 * ended // total
      sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv):
  del argv
  cli.use_cpu_devices(_DEVICES.value)
  if _CACHE.value:
    cli.use_compilation_cache(_CACHE.value)
  spec = launch.spec_from_flags(_DIST)
  if spec.multi_process:
    return run_distributed(spec)
  from splitjax import workload
  from splitjax.runtime.cluster import Cluster, instance_mesh_configs

  try:
    cfg, defs, params = load_inputs()
    cluster = Cluster(cfg, defs, params)
    if _HTTP_PORT.value is not None:
      from splitjax.server.tokenizer import load_tokenizer
      tokenizer = load_tokenizer(_CHECKPOINT.value, cfg.model.vocab_size)
    else:
      specs = workload.build(cfg.workload, cluster.max_request_tokens)
  except input_errors() as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if _HTTP_PORT.value is not None:
    _serve_http(cluster, tokenizer)
    return 0
  meshes = instance_mesh_configs(cfg)
  describe(cfg, [f"{name:<12} devices {list(range(m.first_device, m.first_device + m.size))} "
                 f"(dp={m.dp}, tp={m.tp})" for name, m in zip(cluster.names, meshes)], specs)
  if _WARMUP.value:
    n, secs = cluster.warmup(s.prompt_tokens for s in specs)
    print(f"warm-up: programs for {n} prompt buckets compiled in {secs:.1f} s")
  write_outputs(cfg, cluster.replay(specs, progress=Progress(_PROGRESS.value)))
  return 0


def input_errors() -> tuple[type[Exception], ...]:
  """What bad input raises while loading (reported as ``error: ...``, exit 2)."""
  from splitjax import workload
  from splitjax.config import ConfigError
  from splitjax.model.hf_import import CheckpointError
  return (ConfigError, CheckpointError, workload.TraceError, ValueError)


def load_inputs():
  """(cfg, defs, params) from the config and the checkpoint (or random weights)."""
  import dataclasses

  from splitjax.config import from_config_dict
  from splitjax.model.loading import load_model
  from splitjax.serve_config import ServeConfig
  cfg = from_config_dict(ServeConfig, _CONFIG.value)
  defs, params, model = load_model(_CHECKPOINT.value, cfg.model, cfg.seed)
  return dataclasses.replace(cfg, model=model), defs, params


def describe(cfg, instances: list[str], specs) -> None:
  model = cfg.model
  print(f"model {model.name}: {model.num_layers} layers, {model.param_count() / 1e6:.1f}M params; "
        f"policy {cfg.scheduler.policy.value}"
        + (" + mixed pool" if cfg.scheduler.mixed_pool else ""))
  for line in instances:
    print(f"  {line}")
  if not specs:
    return
  span = max((s.arrival_s for s in specs), default=0.0)
  print(f"workload: {len(specs)} requests over {span:.1f} s "
        f"({cfg.workload.source.value} {cfg.workload.trace})")


def write_outputs(cfg, result) -> Path:
  """The run's files under --output_dir, and the summary table."""
  from splitjax import report
  from splitjax.config import to_plain_dict
  from splitjax.metrics import write_requests_csv, write_timeline_csv, write_token_times_jsonl
  out = Path(_OUTPUT.value)
  out.mkdir(parents=True, exist_ok=True)
  summary = result.to_dict()
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  (out / "config.json").write_text(json.dumps(to_plain_dict(cfg), indent=2))
  write_requests_csv(result.records, out / "requests.csv")
  write_timeline_csv(result.timeline, out / "timeline.csv")
  write_token_times_jsonl(result.records, out / "token_times.jsonl")
  print(report.summary_table(summary))
  print(f"wrote {out}/summary.json, requests.csv, token_times.jsonl, timeline.csv, config.json")
  return out


def run_distributed(spec) -> int:
  """This process's part of a multi-process replay (see module doc); bad
  input aborts every process (exit 2), a lost peer ends the job (exit 3)."""
  from splitjax import workload
  from splitjax.distributed.control import Control, ControlError
  from splitjax.distributed.layout import COORDINATOR, ProcessLayout
  from splitjax.distributed.serving import DistributedCluster, LostPeer
  info = launch.initialize(spec)
  control = Control.from_jax(heartbeat_timeout_s=spec.heartbeat_timeout_s)
  control.start()
  me = info.process_id
  try:
    cfg, defs, params = load_inputs()
    layout = ProcessLayout.parse(_POOLS.value or cfg.cluster.process_pools, info.num_processes)
    cluster = DistributedCluster(cfg, defs, params, layout, control, _WAIT.value)
    if _HTTP_PORT.value is not None:
      from splitjax.server.tokenizer import load_tokenizer
      tokenizer = load_tokenizer(_CHECKPOINT.value, cfg.model.vocab_size)
      specs = []
    else:
      specs = workload.build(cfg.workload, cluster.max_request_tokens)
  except input_errors() as e:
    control.abort(f"process {me}: {e}")
    print(f"error: {e}", file=sys.stderr, flush=True)
    control.leave(2, timeout_s=45.0)    # process 0 waits (bounded) for slow peers
  if me == COORDINATOR:
    print(f"{info.num_processes} processes ({layout.describe()})")
    describe(cfg, cluster.describe(), specs)
  if _WARMUP.value:
    lengths = (cfg.engine.prefill_buckets if _HTTP_PORT.value is not None
               else [s.prompt_tokens for s in specs])
    n, secs = cluster.warmup(lengths)
    print(f"process {me}: programs for {n} prompt buckets compiled in {secs:.1f} s", flush=True)
  try:
    control.barrier("warm", _WAIT.value)
    if _HTTP_PORT.value is not None:
      return _serve_http_distributed(cluster, control, tokenizer)
    result = cluster.replay(specs, progress=Progress(_PROGRESS.value and me == COORDINATOR),
                            on_op=_fault_hook(me))
  except LostPeer as e:
    lines = [f"error: {e}"] + [
        f"  requests in flight on process {p} ({layout.pools[p].value} pool): {ids}"
        for p, ids in e.lost.items()]
    control.abort("; ".join(lines))
    print("\n".join(lines), file=sys.stderr, flush=True)
    write_outputs(cfg, e.result)
    control.leave(FAILED_EXIT)
  except ControlError as e:
    print(f"error: process {me}: {e}", file=sys.stderr, flush=True)
    control.leave(FAILED_EXIT)
  if me == COORDINATOR:
    write_outputs(cfg, result)
  control.finish()
  return 0


def _fault_hook(me: int):
  """--fault_process: SIGKILL after --fault_after_ops ops (testing)."""
  if _FAULT_PROCESS.value is None or _FAULT_PROCESS.value != me:
    return None
  import os
  import signal

  def hook(n: int) -> None:
    if n == _FAULT_OPS.value:
      print(f"process {me}: injecting fault (SIGKILL) after {n} ops", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
  return hook


def _serve_http(cluster, tokenizer, *, warm: bool = True, watch: bool = False):
  """Serves HTTP until interrupted (warming every prompt bucket first if
  ``warm``); writes the served requests' files. Returns the stopped Server.
  ``watch``: end the HTTP server as soon as the engine dies (a lost peer)."""
  import signal
  import threading

  import uvicorn

  from splitjax import report
  from splitjax.runtime.online_types import OnlineLimits
  from splitjax.server.launch import build_server, uvicorn_config
  from splitjax.server.metrics import host_rates
  from splitjax.sim.hardware import get_hardware

  rates = None
  if _HARDWARE.value:
    hw = get_hardware(_HARDWARE.value)
    rates = host_rates(cluster.names, hw.machine_power_w, hw.cost_per_hour_usd)
  server = build_server(cluster, tokenizer, model_name=_MODEL_NAME.value, rates=rates,
                        limits=OnlineLimits(_MAX_WAITING.value, _MAX_OPEN.value))
  if warm:
    n, secs = cluster.warmup(cluster.cfg.engine.prefill_buckets)
    print(f"warm-up: programs for {n} prompt buckets compiled in {secs:.1f} s")
  print(f"serving {server.model_name!r} on http://{_HTTP_HOST.value}:{_HTTP_PORT.value}/v1 "
        f"(tokenizer {tokenizer.name}; context {cluster.max_request_tokens} tokens)", flush=True)
  http = uvicorn.Server(uvicorn_config(server.app, _HTTP_HOST.value, _HTTP_PORT.value,
                                       log_level="info"))
  server.engine.start()
  if watch:
    def watchdog():
      while not http.should_exit:
        if not server.engine.alive:
          http.should_exit = True
        time.sleep(0.2)
    threading.Thread(target=watchdog, daemon=True).start()
  # uvicorn shuts down gracefully on SIGINT / SIGTERM, then re-raises the signal:
  # both end up as KeyboardInterrupt here, so the files below are still written.
  signal.signal(signal.SIGTERM, _interrupt)
  try:
    http.run()
  except KeyboardInterrupt:
    pass
  finally:
    server.engine.stop()
  # The served requests, as a replay reports them (summary.json / requests.csv).
  out = Path(_OUTPUT.value)
  summary = server.recorder.write(out, server.engine.clock.now())
  print(report.summary_table(summary.to_dict()))
  print(f"wrote {out}/summary.json, requests.csv", flush=True)
  return server


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


def _serve_http_distributed(cluster, control, tokenizer) -> int:
  """HTTP across processes: process 0 serves (its engine drives every
  process); the others serve its ops until it stops. The launcher's SIGTERM
  (Ctrl-C) ends process 0's HTTP server, which then stops the others."""
  import signal

  from splitjax.distributed.control import ControlError
  if control.process_id != 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # process 0 says when to stop
    try:
      cluster.serve_instances()
    except ControlError as e:
      print(f"error: process {control.process_id}: {e}", file=sys.stderr, flush=True)
      control.leave(FAILED_EXIT)
    control.finish()
    return 0
  server = _serve_http(cluster, tokenizer, warm=False, watch=True)
  if server.engine.error:
    print(f"error: {server.engine.error}", file=sys.stderr, flush=True)
    control.abort(server.engine.error)
    control.leave(FAILED_EXIT)
  cluster.stop_online()
  control.finish()
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
