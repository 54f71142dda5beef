"""Two-process program for tests/distributed/test_kv_transfer.py (run by launch_local.py).

Process 0 owns the prompt mesh, process 1 the token mesh (2 devices each,
tp=2). Each process prints one ``RESULT {json}`` line:
- ``equal``: per case, received KV == sent KV (sha256 of every group's bytes,
  published by the sender, against the receiver's);
- ``errors``: per case, the KVLayoutError message (or None if none was raised).
"""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from splitjax.distributed import launch  # noqa: E402

spec = launch.DistributedSpec.from_env()
info = launch.initialize(spec)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from splitjax import mesh as mesh_lib  # noqa: E402
from splitjax.config import EngineConfig, MeshConfig, TransferMode  # noqa: E402
from splitjax.distributed.control import Control  # noqa: E402
from splitjax.distributed.kv_transfer import KVChannel, prefill_and_send  # noqa: E402
from splitjax.engine.engine import Engine  # noqa: E402
from splitjax.engine.types import KVLayout, KVLayoutError  # noqa: E402
from splitjax.model.llama import init_model  # noqa: E402
from splitjax.model.params import split_model  # noqa: E402
from splitjax.model.presets import get_preset  # noqa: E402

ME = info.process_id
TIMEOUT_S = 60
ENGINE = EngineConfig(prefill_buckets=(16, 64), attention_chunk=16, decode_slots=4,
                      max_cache_len=96, layer_group_size=1, layerwise_min_tokens=32)
control = Control.from_jax(heartbeat_timeout_s=spec.heartbeat_timeout_s)
control.start()
channel = KVChannel(control)
meshes = [mesh_lib.make_mesh(MeshConfig(tp=2), launch.process_devices(p)) for p in (0, 1)]
defs, params = split_model(init_model(get_preset("tiny", num_layers=4, vocab_size=512), 0))
engines = [Engine(defs, ENGINE, m) for m in meshes]


def digest(prefix) -> list[str]:
  """sha256 of each group's K and V bytes (this process must hold them)."""
  return [hashlib.sha256(np.asarray(a).tobytes()).hexdigest()
          for g in prefix.kv for a in (g.k_LBKTH, g.v_LBKTH)]


def kv_round_trips() -> dict:
  """Real prefills (serialized, layer-wise) sent 0 -> 1; digests compared."""
  equal = {}
  prompts = [list(range(1, 40)), [5, 6, 7]]
  for mode in (TransferMode.SERIALIZED, TransferMode.LAYERWISE):
    tag = f"prefill/{mode.value}"
    if ME == 0:
      pe = engines[0]
      batch = pe.make_batch(prompts)
      sent = prefill_and_send(pe, pe.place_params(params), batch, jax.random.key(0), mode,
                              channel, 1, meshes[1], tag)
      control.publish(f"digest/{tag}", digest(sent))
    else:
      de = engines[1]
      got = channel.receive(de.kv_layout, 0, meshes[0], meshes[1], tag, (2, 64), TIMEOUT_S)
      control.wait_ready(got, TIMEOUT_S, tag)
      equal[tag] = dict(groups=len(got.kv), equal=digest(got) == control.read(f"digest/{tag}",
                                                                               TIMEOUT_S))
  return equal


def expect_error(fn) -> str | None:
  try:
    fn()
  except KVLayoutError as e:
    return str(e)
  return None


def sender_errors() -> dict:
  """Checks that fail on the sender, before anything is announced."""
  pe = engines[0]
  prefix = pe.prefill(pe.place_params(params), pe.make_batch([[1, 2, 3]]), jax.random.key(0))
  g = prefix.kv[0]
  off = NamedSharding(meshes[0], P(None, None, None, "tp", None))   # positions over tp
  bad = type(prefix)((type(g)(jax.device_put(g.k_LBKTH, off), jax.device_put(g.v_LBKTH, off)),),
                     prefix.first_token_B, prefix.lengths_B, prefix.sampling)
  other = Mesh(np.array(launch.process_devices(1)).reshape(2, 1), mesh_lib.AXES)
  return dict(
      not_canonical=expect_error(lambda: channel.send(bad, meshes[0], 1, meshes[1], "x")),
      mesh_shapes=expect_error(lambda: channel.send(prefix, meshes[0], 1, other, "x")))


def receiver_errors() -> dict:
  """A wrong dtype (0 -> 1) and a wrong order (1 -> 0) caught by the receiver."""
  prompt = [[1, 2, 3]]
  out = {}
  if ME == 0:
    pe = engines[0]
    prefill_and_send(pe, pe.place_params(params), pe.make_batch(prompt), jax.random.key(0),
                     TransferMode.SERIALIZED, channel, 1, meshes[1], "dtype")
    out["order"] = expect_error(lambda: channel.receive(
        pe.kv_layout, 1, meshes[1], meshes[0], "second", None, TIMEOUT_S))
  else:
    de = engines[1]
    bf16 = KVLayout(de.kv_layout.num_layers, de.kv_layout.num_kv_heads, de.kv_layout.head_dim,
                    np.dtype(jax.numpy.bfloat16))
    out["dtype"] = expect_error(lambda: channel.receive(bf16, 0, meshes[0], meshes[1], "dtype",
                                                        None, TIMEOUT_S))
    prefix = de.prefill(de.place_params(params), de.make_batch(prompt), jax.random.key(0))
    channel.send(prefix, meshes[1], 0, meshes[0], "first")
  return out


result = dict(process=ME, equal=kv_round_trips())
if ME == 0:
  result["errors"] = sender_errors()
control.barrier("checked", TIMEOUT_S)
result["errors"] = {**result.get("errors", {}), **receiver_errors()}
print("RESULT " + json.dumps(result), flush=True)
control.barrier("reported", TIMEOUT_S)
control.leave(0)   # the rejected transfers are still pending: no orderly shutdown
