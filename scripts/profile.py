"""Profile our engine's prefill and decode on this machine as a Splitwise simulator profile.

  python scripts/profile.py --config configs/split.py --output_csv runs/profiles/cpu_tiny.csv
  python scripts/profile.py --prompt_sizes 128,512,1024 --batch_sizes 1,4,16 --token_size 32 \\
      --repeats 3 --hardware cpu-host

Builds the serving config's model (random weights, or ``--checkpoint``) and engine on
one instance mesh (``cluster.instance_mesh`` starting at device 0) and, for every
(prompt size, batch size) of the grid, writes one CSV row per repeat in the schema of
the paper's ``perf_model.csv``:

  model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,
  prompt_time,token_time,e2e_time,tensor_parallel

Times are milliseconds (see ``splitjax.profiling``): prompt_time = one prefill of
the batch (random ids; compiled beforehand, blocked until ready); token_time = mean
decode step over token_size - 1 steps with the batch in decode slots; e2e_time =
prompt_time + (token_size - 1) * token_time. peak_power and average_power are
written EMPTY: power cannot be measured here, and no number is invented.

The engine is the config's (buckets, max_cache_len, attention tile, layer groups)
with decode_slots = max(batch sizes) (``--slots=max``: the cost a server with that
many slots pays with batch_size of them active; our decode step computes every
slot) or one decode engine per batch size (``--slots=batch``). Decode attends over
the whole max_cache_len, so token_time depends on it. Prefill is layer-wise where
the serving cluster would run it so (``--prefill=auto``: split policy and the
cluster's transfer mode). Combos over --max_batch_tokens, the largest prefill
bucket or the decode cache are skipped and listed. The machine is shared: a
quiet-machine check runs before and after and is printed.

``--concurrent N`` builds N replicas on consecutive instance meshes (devices
0.., N x the mesh size of them) and runs every prefill and decode step on all N
at once: the rows are then the times of an instance while N - 1 others are
equally busy on the same host (virtual CPU devices share its cores).
``--tensor_parallel`` overrides the tensor_parallel column, e.g. 1 to file the
tp=2 virtual-device mesh under the ``cpu-host`` machine kind, which has one
(physical) device.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

# Running scripts/profile.py puts scripts/ first on sys.path, where this file would
# shadow the standard library's ``profile`` module (imported by cProfile).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
  sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from splitjax import cli  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "split.py"), "Serving config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF Llama dir or splitjax checkpoint dir.")
_OUTPUT = flags.DEFINE_string("output_csv", "runs/profiles/perf_model.csv", "Profile CSV.")
_HARDWARE = flags.DEFINE_string("hardware", "cpu-host", "Value of the hardware column.")
_PROMPTS = flags.DEFINE_list("prompt_sizes", ["128", "512", "1024"], "Prompt lengths (tokens).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes (requests).")
_TOKENS = flags.DEFINE_integer("token_size", 32, "Tokens generated per request (>= 2): the "
                               "first by the prefill, token_size - 1 by decode steps.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rows (measurements) per combo.")
_MAX_TOKENS = flags.DEFINE_integer("max_batch_tokens", 16384, "Skip combos with more "
                                   "batch_size x prompt_size tokens.")
_SLOTS = flags.DEFINE_enum("slots", "max", ["max", "batch"], "Decode slots: max(batch sizes) "
                           "in one engine, or one engine per batch size.")
_PREFILL = flags.DEFINE_enum("prefill", "auto", ["auto", "single", "layerwise"],
                             "Prefill program: as the serving cluster picks it, one program, "
                             "or the layer-group chain.")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Virtual CPU devices (CPU only).")
_CACHE = flags.DEFINE_string("compilation_cache_dir", cli.repo_path(".cache", "jax"),
                             "Persistent XLA compilation cache ('' to disable).")
_REQUIRE_QUIET = flags.DEFINE_bool("require_quiet", False, "Abort if the machine is busy.")
_CONCURRENT = flags.DEFINE_integer("concurrent", 1, "Replicas on consecutive instance meshes "
                                   "running every measurement at once (times until all finish).")
_TP_COLUMN = flags.DEFINE_integer("tensor_parallel", 0, "Value of the tensor_parallel column; "
                                  "0 -> the instance mesh's tp.")


def _check_flags() -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(prompt sizes, batch sizes); raises ValueError naming a bad flag."""
  prompts = _parse(_PROMPTS.value, "--prompt_sizes")
  batches = _parse(_BATCHES.value, "--batch_sizes")
  if _TOKENS.value < 2:
    raise ValueError(f"--token_size must be >= 2 (one prefill token + at least one decode "
                     f"step), got {_TOKENS.value}")
  if _REPEATS.value < 1:
    raise ValueError(f"--repeats must be >= 1, got {_REPEATS.value}")
  if _MAX_TOKENS.value < 1:
    raise ValueError(f"--max_batch_tokens must be positive, got {_MAX_TOKENS.value}")
  if not _HARDWARE.value.strip():
    raise ValueError("--hardware must not be empty")
  if _CONCURRENT.value < 1 or _TP_COLUMN.value < 0:
    raise ValueError(f"--concurrent must be >= 1 and --tensor_parallel >= 0, got "
                     f"{_CONCURRENT.value} and {_TP_COLUMN.value}")
  return prompts, batches


def _parse(items, what):
  from splitjax.profiling import parse_sizes
  return parse_sizes(items, what)


def _build(batch_sizes: tuple[int, ...]):
  """(cfg, model config, mesh config of replica 0, [ProfileReplica] on consecutive
  instance meshes, --concurrent of them)."""
  import dataclasses

  from splitjax.config import from_config_dict
  from splitjax.model.loading import load_model
  from splitjax.serve_config import ServeConfig

  cfg = from_config_dict(ServeConfig, _CONFIG.value)
  defs, params, model = load_model(_CHECKPOINT.value, cfg.model, cfg.seed)
  mesh_cfg = dataclasses.replace(cfg.cluster.instance_mesh, first_device=0)
  replicas = [_replica(cfg, defs, params, batch_sizes,
                       dataclasses.replace(mesh_cfg, first_device=i * mesh_cfg.size))
              for i in range(_CONCURRENT.value)]
  return cfg, model, mesh_cfg, replicas


def _replica(cfg, defs, params, batch_sizes: tuple[int, ...], mesh_cfg):
  """A ProfileReplica on ``mesh_cfg``: one engine with max(batch sizes) slots that
  prefills (and decodes, ``--slots=max``) or one decode engine per batch size."""
  import dataclasses

  from splitjax import mesh as mesh_lib
  from splitjax.engine.engine import Engine
  from splitjax.profiling import ProfileReplica

  mesh = mesh_lib.make_mesh(mesh_cfg)
  dp = mesh_cfg.dp
  slots = lambda b: -(-b // dp) * dp
  engine_for = lambda b: Engine(defs, dataclasses.replace(cfg.engine, decode_slots=slots(b)), mesh)
  shared = engine_for(max(batch_sizes))
  placed = shared.place_params(params)
  engines = {slots(max(batch_sizes)): shared}

  def decode_engine_for(b: int):
    if _SLOTS.value == "max":
      return shared
    if slots(b) not in engines:
      engines[slots(b)] = engine_for(b)
    return engines[slots(b)]
  return ProfileReplica(shared, decode_engine_for, placed)


def _layerwise_rule(cfg):
  """prompt size -> whether its prefill runs as the layer-group chain."""
  from splitjax import transfer
  from splitjax.serve_config import ClusterPolicy
  if _PREFILL.value != "auto":
    return lambda p: _PREFILL.value == "layerwise"
  if cfg.scheduler.policy != ClusterPolicy.SPLIT:
    return lambda p: False   # co-located instances send no KV: one program
  return lambda p: transfer.use_layerwise(cfg.cluster.transfer, p, cfg.engine.layerwise_min_tokens)


_COLS = (("prompt", 7), ("batch", 6), ("batch_tok", 10), ("bucket", 7), ("prefill", 10),
         ("rep", 4), ("prompt_ms", 11), ("token_ms", 10), ("e2e_ms", 11))


def _row(*values) -> str:
  fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
  return "".join(fmt(v).rjust(w) for v, (_, w) in zip(values, _COLS))


def _run(profiler, combos, writer, meta: dict, lw_rule) -> dict:
  """Measures every combo (table rows on stdout, progress on stderr), writes
  the CSV rows; returns {combo: [(prompt_ms, token_ms), ...]}."""
  from splitjax.profiling import ProfileRow
  print("".join(name.rjust(w) for name, w in _COLS))
  results, t_start = {}, time.perf_counter()
  for i, c in enumerate(combos):
    sys.stderr.write(f"[{i + 1}/{len(combos)}] prompt {c.prompt_size} x batch {c.batch_size} "
                     f"({time.perf_counter() - t_start:.0f}s elapsed)\n")
    sys.stderr.flush()
    t0 = time.perf_counter()
    results[c] = profiler.measure(c, meta["token_size"], _REPEATS.value)
    mode = "layerwise" if lw_rule(c.prompt_size) else "single"
    for rep, (p_ms, t_ms) in enumerate(results[c]):
      row = ProfileRow(prompt_size=c.prompt_size, batch_size=c.batch_size, prompt_time=p_ms,
                       token_time=t_ms, **meta)
      writer.write(row)
      print(_row(c.prompt_size, c.batch_size, c.batch_tokens, c.bucket, mode, rep, p_ms, t_ms,
                 row.e2e_time), flush=True)
    sys.stderr.write(f"    done in {time.perf_counter() - t0:.1f}s (incl. warm-up compile)\n")
  return results


def _summary(results: dict) -> None:
  """Median over repeats: prompt_time vs batch tokens, token_time vs batch."""
  print("\nmedian over repeats")
  print(f"{'prompt':>7}{'batch':>6}{'batch_tok':>10}{'prompt_ms':>11}{'prefill tok/s':>14}"
        f"{'token_ms':>10}{'decode tok/s':>13}")
  for c, reps in results.items():
    p = statistics.median(r[0] for r in reps)
    t = statistics.median(r[1] for r in reps)
    print(f"{c.prompt_size:>7}{c.batch_size:>6}{c.batch_tokens:>10}{p:>11.2f}"
          f"{c.batch_tokens / p * 1e3:>14.0f}{t:>10.2f}{c.batch_size / t * 1e3:>13.1f}")


def _print_setup(model, mesh_cfg, engine, skipped) -> None:
  print(f"model {model.name}: {model.num_layers} layers, {model.param_count() / 1e6:.1f}M "
        f"params; mesh dp={mesh_cfg.dp} tp={mesh_cfg.tp} on devices "
        f"{list(range(mesh_cfg.size))}; decode cache {engine.max_cache_len} positions; "
        f"decode slots {'max(batch sizes)' if _SLOTS.value == 'max' else 'per batch size'} "
        f"({engine.cfg.decode_slots})")
  if _CONCURRENT.value > 1:
    n = _CONCURRENT.value
    print(f"concurrent: {n} replicas on devices {list(range(n * mesh_cfg.size))}, every "
          f"measurement on all at once (times until the last one finishes)")
  for s in skipped:
    print(f"skipped prompt {s.prompt_size} x batch {s.batch_size}: {s.reason}")


def main(argv):
  del argv
  try:
    prompts, batches = _check_flags()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cli.use_cpu_devices(_DEVICES.value)
  if _CACHE.value:
    cli.use_compilation_cache(_CACHE.value)
  from splitjax import benchmarking as bm
  from splitjax import profiling
  from splitjax.config import ConfigError
  from splitjax.model.hf_import import CheckpointError

  try:
    cfg, model, mesh_cfg, replicas = _build(batches)
  except (ConfigError, CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  engine = replicas[0].prefill_engine
  combos, skipped = profiling.plan(prompts, batches, _TOKENS.value,
                                   max_batch_tokens=_MAX_TOKENS.value,
                                   buckets=engine.cfg.prefill_buckets,
                                   max_cache_len=engine.max_cache_len)
  _print_setup(model, mesh_cfg, engine, skipped)
  if not combos:
    print("error: every combo was skipped (see above)", file=sys.stderr)
    return 2
  quiet = bm.check_quiet()
  print(quiet.describe())
  if _REQUIRE_QUIET.value and not quiet.quiet:
    print("error: machine is busy (--require_quiet)", file=sys.stderr)
    return 3
  try:
    writer = profiling.ProfileWriter(_OUTPUT.value)
  except OSError as e:
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: cannot write --output_csv {_OUTPUT.value}: {e.strerror or e}{where}",
          file=sys.stderr)
    return 2
  lw_rule = _layerwise_rule(cfg)
  first = replicas[0]
  profiler = profiling.Profiler(first.prefill_engine, first.decode_engine_for, first.params,
                                layerwise=lw_rule, seed=cfg.prompt_seed,
                                concurrent=replicas[1:])
  meta = dict(model=model.name, hardware=_HARDWARE.value, token_size=_TOKENS.value,
              tensor_parallel=_TP_COLUMN.value or mesh_cfg.tp)
  try:
    results = _run(profiler, combos, writer, meta, lw_rule)
  finally:
    writer.close()
  _summary(results)
  after = bm.check_quiet(1.0)
  print(after.describe().replace("machine check", "machine check after the run"))
  print(f"wrote {writer.path} ({sum(len(r) for r in results.values())} rows; "
        "peak_power / average_power left empty: not measurable here)")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
