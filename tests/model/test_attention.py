"""Attention kernels against a naive reference; rotary scaling against transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitjax.model import attention
from splitjax.model.presets import get_preset


def _naive(q_BKGTH, k_BKTH, v_BKTH):
  s = jnp.einsum("bkgqh,bksh->bkgqs", q_BKGTH, k_BKTH) * q_BKGTH.shape[-1] ** -0.5
  t = q_BKGTH.shape[3]
  s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
  return jnp.einsum("bkgqs,bksh->bkgqh", jax.nn.softmax(s, -1), v_BKTH)


@pytest.mark.parametrize("t,chunk", [(1, 4), (13, 4), (16, 16), (33, 8), (20, 512)])
def test_chunked_causal_matches_naive(t, chunk):
  ks = jax.random.split(jax.random.key(t), 3)
  q = jax.random.normal(ks[0], (2, 2, 3, t, 8))
  k = jax.random.normal(ks[1], (2, 2, t, 8))
  v = jax.random.normal(ks[2], (2, 2, t, 8))
  got = attention.causal_prefill_attention(q, k, v, chunk)
  np.testing.assert_allclose(np.asarray(got), np.asarray(_naive(q, k, v)), atol=1e-5)


def test_decode_attention_ignores_positions_past_valid():
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (2, 2, 3, 8))
  k = jax.random.normal(ks[1], (2, 2, 10, 8))
  v = jax.random.normal(ks[2], (2, 2, 10, 8))
  valid = jnp.array([4, 10])
  out = attention.decode_attention(q, k.transpose(0, 1, 3, 2), v, valid)
  for b in range(2):  # reference: softmax over the valid prefix only
    n = int(valid[b])
    p = jax.nn.softmax(jnp.einsum("kgh,ksh->kgs", q[b], k[b, :, :n]) * 8 ** -0.5, -1)
    np.testing.assert_allclose(np.asarray(out[b]),
                               np.asarray(jnp.einsum("kgs,ksh->kgh", p, v[b, :, :n])), atol=1e-5)
  garbage = jax.random.normal(ks[3], (2, 2, 10, 8)) * 100
  k2 = k.at[0, :, 4:].set(garbage[0, :, 4:])
  v2 = v.at[0, :, 4:].set(garbage[0, :, 4:])
  np.testing.assert_allclose(
      np.asarray(attention.decode_attention(q, k2.transpose(0, 1, 3, 2), v2, valid)),
      np.asarray(out), atol=1e-6)


def test_llama3_rope_scaling_matches_transformers():
  torch = pytest.importorskip("torch")
  from transformers import LlamaConfig
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  hf = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=500000.0,
                   max_position_embeddings=131072,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=8192))
  want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
  cfg = get_preset("tiny", hidden_size=256, num_heads=4, num_kv_heads=4, rope_theta=500000.0,
                   rope_scaling_factor=8.0, rope_original_max_len=8192)
  np.testing.assert_allclose(np.asarray(attention.rope_inv_freq(cfg)), want.numpy(), rtol=1e-6)
