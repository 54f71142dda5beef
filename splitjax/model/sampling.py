"""Token sampling: greedy, temperature, top-k and top-p, per row.

Every row carries its own parameters, so one compiled program serves a batch
mixing greedy and sampled requests. Rows with temperature 0 are greedy
(argmax, lowest index on ties). When every row is greedy the sort needed for
top-k/top-p is skipped at run time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from splitjax.config import SamplingConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Per-row sampling parameters: temperature_B f32, top_k_B i32, top_p_B f32."""
  temperature_B: jax.Array
  top_k_B: jax.Array
  top_p_B: jax.Array

  @staticmethod
  def stack(cfgs: list[SamplingConfig], batch: int) -> "SamplingParams":
    """Host arrays for ``cfgs`` row by row, padded with greedy rows to ``batch``."""
    rows = list(cfgs) + [SamplingConfig()] * (batch - len(cfgs))
    return SamplingParams(np.array([c.temperature for c in rows], np.float32),
                          np.array([c.top_k for c in rows], np.int32),
                          np.array([c.top_p for c in rows], np.float32))


def sample(logits_BV: jax.Array, key: jax.Array, sp: SamplingParams) -> jax.Array:
  """Draws one token per row from float32 logits [B, V]; returns int32 [B]."""
  greedy = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

  def stochastic(_):
    temp = jnp.maximum(sp.temperature_B, 1e-6)[:, None]
    order = jnp.argsort(-logits_BV, axis=-1)
    sorted_l = jnp.take_along_axis(logits_BV, order, axis=-1) / temp
    v = logits_BV.shape[-1]
    rank = jnp.arange(v)[None, :]
    top_k = jnp.where(sp.top_k_B > 0, sp.top_k_B, v)[:, None]
    probs = jax.nn.softmax(sorted_l, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs       # mass strictly above each rank
    keep = (rank < top_k) & ((before < sp.top_p_B[:, None]) | (rank == 0))
    choice = jax.random.categorical(key, jnp.where(keep, sorted_l, -jnp.inf), axis=-1)
    picked = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(sp.temperature_B > 0, picked, greedy)

  return jax.lax.cond(jnp.any(sp.temperature_B > 0), stochastic, lambda _: greedy, None)
