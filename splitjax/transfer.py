"""Moving a prefill's KV prefix to a decode engine's mesh with ``jax.device_put``.

Both sides use the canonical layout ``[L, B, K, T, H]`` with KV heads over
``tp`` (``mesh.kv_spec``). The source arrays must be in exactly that layout
and the destination engine's :class:`KVLayout` must match shape and dtype;
anything else raises :class:`KVLayoutError` instead of moving wrong data.

``device_put`` is asynchronous: called on a KV group whose producing program
has not finished, it returns at once and the copy starts when the data is
ready. A layer-wise prefill therefore overlaps each group's copy with the
compute of the following groups; a serialized transfer waits for the whole
prefill first.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding

from splitjax import mesh as mesh_lib
from splitjax.config import TransferMode
from splitjax.engine.engine import Engine
from splitjax.engine.types import KVGroup, KVLayoutError, Prefix


def _check_canonical(arr: jax.Array, what: str) -> None:
  sh = arr.sharding
  if not isinstance(sh, NamedSharding) or sh.spec != mesh_lib.kv_spec():
    raise KVLayoutError(f"{what} is not in the canonical KV layout "
                        f"{mesh_lib.kv_spec()} (got {sh})")


def to_engine(prefix: Prefix, dst: Engine) -> Prefix:
  """Starts copying ``prefix`` onto ``dst``'s mesh; returns without waiting.

  Raises KVLayoutError if the prefix is not in the canonical layout or does
  not match ``dst.kv_layout``.
  """
  dst.kv_layout.check(prefix)
  kv = []
  for i, g in enumerate(prefix.kv):
    _check_canonical(g.k_LBKTH, f"KV group {i} k")
    _check_canonical(g.v_LBKTH, f"KV group {i} v")
    kv.append(KVGroup(jax.device_put(g.k_LBKTH, dst.kv_sharding),
                      jax.device_put(g.v_LBKTH, dst.kv_sharding)))
  rest = jax.device_put((prefix.first_token_B, prefix.lengths_B, prefix.sampling), dst.rep)
  return Prefix(tuple(kv), *rest)


def use_layerwise(mode: TransferMode, prompt_len: int, min_tokens: int) -> bool:
  """Whether a prompt of ``prompt_len`` tokens is prefilled layer-wise."""
  if mode == TransferMode.AUTO:
    return prompt_len >= min_tokens
  return mode == TransferMode.LAYERWISE


def prefill_and_transfer(src: Engine, dst: Engine, params, batch, key,
                         mode: TransferMode) -> Prefix:
  """Prefill ``batch`` on ``src`` and move its KV to ``dst``.

  SERIALIZED: one prefill program; the copy starts after it has finished.
  LAYERWISE: a layer-group chain; each group's copy is issued right away and
  overlaps the remaining groups. AUTO picks by the longest prompt in the batch.
  The returned prefix lives on ``dst`` (arrays may still be in flight).
  """
  longest = int(batch.lengths_B[:batch.num_real].max())
  layerwise = use_layerwise(mode, longest, src.cfg.layerwise_min_tokens)
  prefix = src.prefill(params, batch, key, layerwise=layerwise)
  if not layerwise:
    jax.block_until_ready(prefix)
  return to_engine(prefix, dst)


@functools.lru_cache(maxsize=None)
def _take_row_fn(sharding):
  """Jitted [L, B, ...] -> [L, 1, ...] row gather that keeps ``sharding``."""
  take = lambda a, row: jax.lax.dynamic_slice_in_dim(a, row, 1, axis=1)
  return jax.jit(lambda g, row: KVGroup(take(g.k_LBKTH, row), take(g.v_LBKTH, row)),
                 out_shardings=KVGroup(sharding, sharding))


def row_prefix(prefix: Prefix, row: int) -> Prefix:
  """Row ``row`` of ``prefix`` as a one-row Prefix on the same mesh, group by
  group (each group's slice waits only for that group, so it can still overlap
  a layer-wise prefill). Used to send each request's KV to its own token
  instance without moving the rest of the batch."""
  r = np.int32(row)
  kv = tuple(_take_row_fn(g.k_LBKTH.sharding)(g, r) for g in prefix.kv)
  one = lambda a: a[row:row + 1]
  return Prefix(kv, one(prefix.first_token_B), one(prefix.lengths_B),
                jax.tree.map(one, prefix.sampling))
