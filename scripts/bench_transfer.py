"""KV transfer speed: in-process vs across processes, serialized vs layer-wise.

  python scripts/bench_transfer.py --output_json bench_results/bench_transfer.json

Two sections, each measured in one process (two meshes of ``--tp`` devices)
and across two processes started with ``scripts/launch_local.py`` (the prompt
mesh in process 0, the token mesh in process 1, ``splitjax.distributed``'s
KVChannel: header through the coordination service, then ``jax.device_put``):

  bandwidth  KV of 1 MiB .. 1 GiB (``--sizes_mib``) in the canonical layout
             [L=4, B=1, K=4, T, H=64] float32: time until it is on the token
             mesh (best of ``--repeats``; across processes timed by the
             receiver from a common barrier)
  overlap    a ``--model`` prefill of each ``--prompt_lens`` prompt whose KV is sent
             serialized (prefill, then copy) or layer-wise (each layer group's copy
             issued as the chain produces it). Within each run: exposed = KV complete on
             the token mesh - prefill complete on the prompt mesh (wall clock, the same
             host's for both processes); hidden = 1 - exposed layer-wise / exposed
             serialized (medians of ``--repeats``)

The machine is checked for other processes' CPU use first (and after); all
processes share its cores, so cross-process numbers include the receiver's
and sender's competition for them. The largest size is capped by
``--sizes_mib`` (1 GiB: ~4 GiB resident at most, in-process source +
destination, under the 24 GB here).
"""

from __future__ import annotations

import enum
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402


class Role(enum.Enum):
  """DRIVER measures in-process and launches the CROSS pair."""
  DRIVER = "driver"
  CROSS = "cross"


_OUT = flags.DEFINE_string("output_json", "bench_results/bench_transfer.json", "JSON output.")
_SIZES = flags.DEFINE_list("sizes_mib", ["1", "4", "16", "64", "256", "1024"], "KV sizes (MiB).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Best of this many (bandwidth sizes < 256 MiB "
                                "and overlap; larger sizes use 2).")
_MODEL = flags.DEFINE_string("model", "small", "Preset for the overlap section.")
_LENS = flags.DEFINE_list("prompt_lens", ["512", "2048"], "Prompt lengths (overlap).")
_TP = flags.DEFINE_integer("tp", 1, "Devices per mesh (tensor parallelism).")
_REQUIRE_QUIET = flags.DEFINE_bool("require_quiet", False, "Abort if the machine is busy.")
_WAIT_QUIET = flags.DEFINE_float("wait_quiet_s", 0.0, "First wait up to this many seconds for "
                                 "a quiet machine (then run anyway, saying so).")
_ROLE = flags.DEFINE_enum_class("role", Role.DRIVER, Role, "Internal: which part to run.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 1200.0, "Cross-process part: launcher timeout.")
_L, _K, _H = 4, 4, 64   # bandwidth KV shape [L, 1, K, T, H]


def kv_shape(nbytes: int) -> tuple[int, ...]:
  """[L, 1, K, T, H] float32 with k + v = ``nbytes``."""
  return (_L, 1, _K, nbytes // 2 // (_L * _K * _H * 4), _H)


def make_kv(nbytes: int, mesh):
  """(k, v) of ``kv_shape(nbytes)`` on ``mesh`` in the canonical layout, non-constant."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from splitjax import mesh as mesh_lib
  shape = kv_shape(nbytes)
  make = jax.jit(lambda s: jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape) * s,
                 out_shardings=NamedSharding(mesh, mesh_lib.kv_spec()))
  return jax.block_until_ready((make(1.0), make(-1.0)))


def repeats_for(mib: float) -> int:
  return _REPEATS.value if mib < 256 else min(2, _REPEATS.value)


def engines(meshes):
  """Engines of ``--model`` (random weights) on each mesh, and the weights."""
  from splitjax.config import EngineConfig
  from splitjax.engine.engine import Engine
  from splitjax.model.llama import init_model
  from splitjax.model.params import split_model
  from splitjax.model.presets import get_preset
  defs, params = split_model(init_model(get_preset(_MODEL.value), 0))
  cfg = EngineConfig(prefill_buckets=tuple(int(t) for t in _LENS.value), decode_slots=1,
                     max_cache_len=max(int(t) for t in _LENS.value), layerwise_min_tokens=1)
  return [Engine(defs, cfg, m) for m in meshes], params


def ready_time(arrays) -> float:
  """Wall time (time.time) at which every array of the pytree is ready (polls)."""
  import jax
  leaves = [a for a in jax.tree.leaves(arrays) if hasattr(a, "is_ready")]
  while not all(a.is_ready() for a in leaves):
    time.sleep(0.0002)
  return time.time()


def overlap_row(t_len: int, kv_mib: float, runs: dict) -> dict:
  """One overlap row from per-mode lists of (prefill seconds, exposed seconds)."""
  med = lambda xs: statistics.median(xs)
  pre = {m: min(p for p, _ in r) for m, r in runs.items()}
  exp = {m: med([e for _, e in r]) for m, r in runs.items()}
  ser, lw = exp["serialized"], exp["layerwise"]
  return dict(prompt=t_len, kv_mib=round(kv_mib, 1), prefill_ms=pre["serialized"] * 1e3,
              chain_ms=pre["layerwise"] * 1e3, serialized_exposed_ms=ser * 1e3,
              layerwise_exposed_ms=lw * 1e3, hidden=(1 - lw / ser) if ser > 0 else None)


# ---------------------------------------------------------------- in-process
def one_in_process(pe, de, params, batch, mode) -> tuple[float, float]:
  """(prefill seconds, exposed seconds) of one prefill whose KV goes to ``de``."""
  import jax

  from splitjax import transfer
  from splitjax.config import TransferMode
  lw = mode == TransferMode.LAYERWISE
  t0 = time.time()
  prefix = pe.prefill(params, batch, jax.random.key(0), layerwise=lw)
  if lw:
    got = transfer.to_engine(prefix, de)
    t_src = ready_time(prefix)
  else:
    t_src = ready_time(prefix)
    got = transfer.to_engine(prefix, de)
  return t_src - t0, ready_time(got) - t_src


def in_process() -> dict:
  """Both sections between two meshes of this process."""
  import jax
  from jax.sharding import NamedSharding

  from splitjax import mesh as mesh_lib
  from splitjax.benchmarking import best_time
  from splitjax.config import MeshConfig, TransferMode
  tp = _TP.value
  meshes = [mesh_lib.make_mesh(MeshConfig(tp=tp, first_device=i * tp)) for i in (0, 1)]
  dst = NamedSharding(meshes[1], mesh_lib.kv_spec())
  bandwidth = []
  for mib in map(float, _SIZES.value):
    kv = make_kv(int(mib * 2**20), meshes[0])
    s = best_time(lambda: jax.block_until_ready(jax.device_put(kv, dst)), repeats_for(mib))
    bandwidth.append(dict(mib=mib, seconds=s))
    del kv
  (pe, de), params = engines(meshes)
  params = pe.place_params(params)
  overlap = []
  for t_len in map(int, _LENS.value):
    batch = pe.make_batch([list(range(1, t_len + 1))])
    runs = {}
    for mode in (TransferMode.SERIALIZED, TransferMode.LAYERWISE):
      runs[mode.value] = [one_in_process(pe, de, params, batch, mode)
                          for _ in range(_REPEATS.value + 1)][1:]
    kv_mib = pe.prefill(params, batch, jax.random.key(0)).kv_nbytes / 2**20
    overlap.append(overlap_row(t_len, kv_mib, runs))
  return dict(bandwidth=bandwidth, overlap=overlap)


# ---------------------------------------------------------------- cross-process
def cross_bandwidth(control, channel, meshes) -> list[dict]:
  """Process 0 sends KV of every size to process 1, which times the arrival."""
  import jax
  import numpy as np

  from splitjax import mesh as mesh_lib
  from splitjax.engine.types import KVGroup, KVLayout, Prefix
  from splitjax.model.sampling import SamplingParams
  me, rows = control.process_id, []
  for mib in map(float, _SIZES.value):
    nbytes = int(mib * 2**20)
    if me == 0:
      k, v = make_kv(nbytes, meshes[0])
      rest = jax.device_put((np.zeros(1, np.int32), np.ones(1, np.int32),
                             SamplingParams.stack([], 1)), mesh_lib.replicated(meshes[0]))
      prefix = Prefix((KVGroup(k, v),), *rest)
    times = []
    for r in range(repeats_for(mib) + 1):          # the first one warms up
      tag = f"bw{mib}/{r}"
      control.sync(tag, 600)
      t = time.perf_counter()
      if me == 0:
        channel.send(prefix, meshes[0], 1, meshes[1], tag)
      else:
        got = channel.receive(KVLayout(_L, _K, _H, np.dtype(np.float32)), 0, meshes[0],
                              meshes[1], tag, None, 600)
        control.wait_ready(got, 600, tag)
        times.append(time.perf_counter() - t)
        del got
    rows.append(dict(mib=mib, seconds=min(times[1:]) if times else None))
  return rows


def cross_overlap(control, channel, meshes) -> list[dict]:
  """Process 0 prefills and sends (serialized / layer-wise) and says when its
  prefill was complete; process 1 says when the KV was complete."""
  import jax

  from splitjax.config import TransferMode
  me = control.process_id
  (pe, de), params = engines(meshes)
  params = (pe if me == 0 else de).place_params(params)
  rows = []
  for t_len in map(int, _LENS.value):
    batch = pe.make_batch([list(range(1, t_len + 1))])
    runs = {}
    for mode in (TransferMode.SERIALIZED, TransferMode.LAYERWISE):
      lw, runs[mode.value] = mode == TransferMode.LAYERWISE, []
      for r in range(_REPEATS.value + 1):
        tag = f"ov{t_len}/{mode.value}/{r}"
        control.sync(tag, 600)
        if me == 0:
          t0 = time.time()
          prefix = pe.prefill(params, batch, jax.random.key(0), layerwise=lw)
          if not lw:
            t_src = ready_time(prefix)
          channel.send(prefix, meshes[0], 1, meshes[1], tag)
          t_src = ready_time(prefix) if lw else t_src
          control.publish(f"{tag}/src", [t0, t_src])
        else:
          got = channel.receive(de.kv_layout, 0, meshes[0], meshes[1], tag, None, 600)
          t_dst = ready_time(got)
          kv_mib = got.kv_nbytes / 2**20
          t0, t_src = control.read(f"{tag}/src", 600)
          if r:                                   # the first run warms up
            runs[mode.value].append((t_src - t0, t_dst - t_src))
    if me == 1:
      rows.append(overlap_row(t_len, kv_mib, runs))
  return rows


def cross_worker() -> int:
  """Runs under launch_local.py -n 2; process 1 prints ``RESULT {json}``."""
  from splitjax import mesh as mesh_lib
  from splitjax.config import MeshConfig
  from splitjax.distributed import launch
  from splitjax.distributed.control import Control
  from splitjax.distributed.kv_transfer import KVChannel
  spec = launch.DistributedSpec.from_env()
  launch.initialize(spec)
  control = Control.from_jax(heartbeat_timeout_s=spec.heartbeat_timeout_s)
  control.start()
  channel = KVChannel(control)
  meshes = [mesh_lib.make_mesh(MeshConfig(tp=_TP.value), launch.process_devices(p))
            for p in (0, 1)]
  result = dict(bandwidth=cross_bandwidth(control, channel, meshes),
                overlap=cross_overlap(control, channel, meshes))
  if control.process_id == 1:
    print("RESULT " + json.dumps(result), flush=True)
  control.finish()
  return 0


# ---------------------------------------------------------------- driver
def run_cross() -> dict:
  """launch_local.py -n 2 -- this script --role=cross; process 1's RESULT."""
  root = Path(__file__).resolve().parents[1]
  passthrough = [f"--sizes_mib={','.join(_SIZES.value)}", f"--repeats={_REPEATS.value}",
                 f"--model={_MODEL.value}", f"--prompt_lens={','.join(_LENS.value)}",
                 f"--tp={_TP.value}", "--role=cross"]
  cmd = [sys.executable, str(root / "scripts" / "launch_local.py"), "-n=2",
         f"--cpu_devices={_TP.value}", f"--timeout_s={_TIMEOUT.value}", "--",
         str(Path(__file__).resolve()), *passthrough]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT.value + 60)
  for line in proc.stdout.splitlines():
    if line.startswith("[p1] RESULT "):
      return json.loads(line[len("[p1] RESULT "):])
  raise RuntimeError(f"cross-process part failed ({proc.returncode}):\n{proc.stdout[-4000:]}")


def print_tables(inproc: dict, cross: dict) -> None:
  gbps = lambda r: r["mib"] * 2**20 / r["seconds"] / 1e9
  print("\n== bandwidth: KV on the token mesh (GB/s, ms)")
  print(f"{'KV MiB':>8} {'in-process':>20} {'cross-process':>20} {'ratio':>7}")
  for a, b in zip(inproc["bandwidth"], cross["bandwidth"]):
    print(f"{a['mib']:>8.0f} {gbps(a):>9.2f} ({a['seconds'] * 1e3:>7.1f}) "
          f"{gbps(b):>9.2f} ({b['seconds'] * 1e3:>7.1f}) {gbps(a) / gbps(b):>7.1f}x")
  print("\n== overlap: exposed transfer after the prefill (ms); hidden = layer-wise's share")
  print(f"{'where':>8} {'prompt':>6} {'KV MiB':>7} {'prefill':>8} {'chain':>8} "
        f"{'serial exp':>10} {'lw exp':>8} {'hidden':>7}")
  for where, rows in (("in", inproc["overlap"]), ("cross", cross["overlap"])):
    for r in rows:
      print(f"{where:>8} {r['prompt']:>6} {r['kv_mib']:>7.1f} {r['prefill_ms']:>8.1f} "
            f"{r['chain_ms']:>8.1f} {r['serialized_exposed_ms']:>10.1f} "
            f"{r['layerwise_exposed_ms']:>8.1f} {r['hidden']:>7.0%}")
  print("prefill / chain: prompt mesh, single program / layer-group chain (best); exposed: "
        "KV complete on the token mesh after the prefill completed (median)")


def driver() -> int:
  from splitjax import benchmarking as bm
  t_wait = time.perf_counter()
  quiet = bm.check_quiet()
  while not quiet.quiet and time.perf_counter() - t_wait < _WAIT_QUIET.value:
    quiet = bm.check_quiet()
  if _WAIT_QUIET.value:
    print(f"waited {time.perf_counter() - t_wait:.0f} s for a quiet machine")
  print(quiet.describe())
  if _REQUIRE_QUIET.value and not quiet.quiet:
    print("error: machine is busy (--require_quiet)", file=sys.stderr)
    return 2
  cli.use_cpu_devices(2 * _TP.value)
  t0 = time.perf_counter()
  inproc = in_process()
  print(f"in-process part: {time.perf_counter() - t0:.0f} s", flush=True)
  t1 = time.perf_counter()
  cross = run_cross()
  print(f"cross-process part: {time.perf_counter() - t1:.0f} s", flush=True)
  after = bm.check_quiet(1.0)
  print_tables(inproc, cross)
  print(after.describe())
  bm.write_results(_OUT.value, dict(
      machine=dict(before=quiet.describe(), quiet=quiet.quiet, after=after.describe()),
      config=dict(sizes_mib=_SIZES.value, repeats=_REPEATS.value, model=_MODEL.value,
                  prompt_lens=_LENS.value, tp=_TP.value, kv_shape="[4, 1, 4, T, 64] f32"),
      in_process=inproc, cross_process=cross))
  return 0


def main(argv):
  del argv
  return cross_worker() if _ROLE.value == Role.CROSS else driver()


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
