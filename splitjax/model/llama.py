"""Llama-family decoder in Flax NNX.

Embedding, RMSNorm, rotary embeddings, grouped-query attention and a SwiGLU
MLP, with optional tied embeddings. Parameters carry *logical* partition names
(``embed``, ``heads``, ``kv_heads``, ``mlp``, ``vocab``); ``splitjax.mesh``
maps them onto mesh axes.

The model exposes the pieces the engine compiles separately:
``embed`` -> ``Block.prefill`` / ``Block.decode`` -> ``Head``, plus
``__call__`` for a plain full-sequence forward (tests, parity checks).
Projection weights are stored [out, in], as in Hugging Face checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from splitjax.config import DType, ModelConfig
from splitjax.model import attention


def jnp_dtype(dtype: DType):
  return {DType.FLOAT32: jnp.float32, DType.BFLOAT16: jnp.bfloat16}[dtype]


class Dense(nnx.Module):
  """y = x @ weight.T without bias; ``weight`` is [out, in] as in Hugging Face.

  The [out, in] orientation is deliberate: for the skinny activations of
  decode (a few rows), XLA:CPU runs ``x @ W.T`` up to 1.6x faster than
  ``x @ W`` with W stored [in, out] (measured on the ``small`` preset).
  """

  def __init__(self, cfg: ModelConfig, din: int, dout: int, names: tuple, rngs: nnx.Rngs):
    dt = jnp_dtype(cfg.dtype)
    init = nnx.initializers.normal(0.02)
    self.weight = nnx.Param(init(rngs.params(), (dout, din), dt), out_sharding=names,
                            eager_sharding=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.einsum("...i,oi->...o", x, self.weight[...])


class RMSNorm(nnx.Module):
  """y = x / rms(x) * scale, computed in float32, returned in the input dtype."""

  def __init__(self, dim: int, eps: float, dtype):
    self.scale = nnx.Param(jnp.ones((dim,), dtype), out_sharding=("embed",), eager_sharding=False)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...] * y.astype(x.dtype)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.mlp_hidden
    self.gate_proj = Dense(cfg, d, f, ("mlp", "embed"), rngs)
    self.up_proj = Dense(cfg, d, f, ("mlp", "embed"), rngs)
    self.down_proj = Dense(cfg, f, d, ("embed", "mlp"), rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
  """One decoder layer: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, dt = cfg.hidden_size, jnp_dtype(cfg.dtype)
    self.input_norm = RMSNorm(d, cfg.rms_norm_eps, dt)
    self.q_proj = Dense(cfg, d, cfg.q_size, ("heads", "embed"), rngs)
    self.k_proj = Dense(cfg, d, cfg.kv_size, ("kv_heads", "embed"), rngs)
    self.v_proj = Dense(cfg, d, cfg.kv_size, ("kv_heads", "embed"), rngs)
    self.o_proj = Dense(cfg, cfg.q_size, d, ("embed", "heads"), rngs)
    self.post_norm = RMSNorm(d, cfg.rms_norm_eps, dt)
    self.mlp = MLP(cfg, rngs)

  def _qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """x [..., D] -> q [..., K, G, H], k and v [..., K, H], rotary applied."""
    c = self.cfg
    g = c.num_heads // c.num_kv_heads
    h = self.input_norm(x)
    lead = x.shape[:-1]
    q = self.q_proj(h).reshape(*lead, c.num_heads, c.head_dim)
    k = self.k_proj(h).reshape(*lead, c.num_kv_heads, c.head_dim)
    v = self.v_proj(h).reshape(*lead, c.num_kv_heads, c.head_dim)
    q = attention.apply_rope(q, cos, sin).reshape(*lead, c.num_kv_heads, g, c.head_dim)
    k = attention.apply_rope(k, cos, sin)
    return q, k, v

  def _finish(self, x: jax.Array, attn: jax.Array) -> jax.Array:
    x = x + self.o_proj(attn)
    return x + self.mlp(self.post_norm(x))

  def prefill(self, x_BTD: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array,
              chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal layer over right-padded prompts.

    Returns (x_BTD, k_BKTH, v_BKTH): the layer output and this layer's KV,
    in the canonical cache layout (KV heads before positions).
    """
    b, t, _ = x_BTD.shape
    q, k, v = self._qkv(x_BTD, cos_BTH, sin_BTH)
    q_BKGTH = q.transpose(0, 2, 3, 1, 4)
    k_BKTH, v_BKTH = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    o = attention.causal_prefill_attention(q_BKGTH, k_BKTH, v_BKTH, chunk)
    o = o.transpose(0, 3, 1, 2, 4).reshape(b, t, self.cfg.q_size)
    return self._finish(x_BTD, o), k_BKTH, v_BKTH

  def decode(self, x_BD: jax.Array, cos_BH: jax.Array, sin_BH: jax.Array,
             pos_B: jax.Array, kT_BKHS: jax.Array, v_BKSH: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One new token per sequence against this layer's cache.

    Keys are cached transposed ([B, K, H, S], see attention.decode_attention),
    values as [B, K, S, H]. The token's K/V are written at position
    ``pos_B[b]`` of row ``b``, then attention covers positions <= pos_B.
    Returns (x_BD, kT_BKHS, v_BKSH); callers donate the caches so the writes
    are in place.
    """
    b = x_BD.shape[0]
    q, k, v = self._qkv(x_BD, cos_BH, sin_BH)  # q [B,K,G,H], k/v [B,K,H]
    kT_BKHS, v_BKSH = _write_rows(kT_BKHS, v_BKSH, k, v, pos_B)
    o = attention.decode_attention(q, kT_BKHS, v_BKSH, pos_B + 1)
    return self._finish(x_BD, o.reshape(b, self.cfg.q_size)), kT_BKHS, v_BKSH

  def mixed(self, x_ND: jax.Array, cos_NH: jax.Array, sin_NH: jax.Array, pos_B: jax.Array,
            kT_BKHS: jax.Array, v_BKSH: jax.Array, slots_P: jax.Array, pos_PC: jax.Array,
            valid_PC: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One decode token per slot plus P prefill chunks of C tokens, in one layer.

    x_ND: N = B + P*C rows: the B slots' decode tokens, then the chunks'
    tokens (row-major); the dense projections run once over all N rows.
    pos_B: int32 decode write positions (as in :meth:`decode`); slots_P:
    int32 slot each chunk fills; pos_PC: int32 position of each chunk token;
    valid_PC: bool, the token is real (not padding).
    Every slot first writes its decode token at pos_B (exactly as decode),
    then the valid chunk tokens are scattered into their slots (invalid ones
    dropped), so a chunk overrides the garbage write of its inactive slot at
    the same position. Decode rows then attend as in decode; chunk token
    (p, c) attends over its slot's positions <= pos_PC[p, c] (the chunk's own
    keys as just computed, earlier positions from the cache; see
    attention.chunk_attention, tiles of ``chunk``). Chunk positions must be
    consecutive from pos_PC[p, 0] = the number of positions already cached.
    Returns (x_ND, kT_BKHS, v_BKSH); callers donate the caches.
    """
    b, s = kT_BKHS.shape[0], kT_BKHS.shape[3]
    p, c = pos_PC.shape
    q, k, v = self._qkv(x_ND, cos_NH, sin_NH)  # q [N,K,G,H], k/v [N,K,H]
    kT_BKHS, v_BKSH = _write_rows(kT_BKHS, v_BKSH, k[:b], v[:b], pos_B)
    slot_T = jnp.broadcast_to(slots_P[:, None], (p, c)).reshape(-1)
    pos_T = jnp.where(valid_PC, pos_PC, s).reshape(-1)        # s: out of range -> dropped
    kT_BKHS = kT_BKHS.at[slot_T, :, :, pos_T].set(k[b:].astype(kT_BKHS.dtype), mode="drop")
    v_BKSH = v_BKSH.at[slot_T, :, pos_T, :].set(v[b:].astype(v_BKSH.dtype), mode="drop")
    o_dec = attention.decode_attention(q[:b], kT_BKHS, v_BKSH, pos_B + 1)
    q_PKGCH = q[b:].reshape(p, c, *q.shape[1:]).transpose(0, 2, 3, 1, 4)
    k_PKCH, v_PKCH = (a[b:].reshape(p, c, *a.shape[1:]).transpose(0, 2, 1, 3) for a in (k, v))
    o_chk = attention.chunk_attention(q_PKGCH, k_PKCH, v_PKCH, kT_BKHS, v_BKSH, slots_P,
                                      pos_PC[:, 0], chunk)
    o = jnp.concatenate([o_dec.reshape(b, -1), o_chk.transpose(0, 3, 1, 2, 4).reshape(p * c, -1)])
    return self._finish(x_ND, o), kT_BKHS, v_BKSH


def _write_rows(kT_BKHS: jax.Array, v_BKSH: jax.Array, k_BKH: jax.Array, v_BKH: jax.Array,
                pos_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes row b's K/V [K, H] at position pos_B[b] of cache row b: one
  in-place dynamic_update_slice per row (the decode hot path)."""
  for row in range(k_BKH.shape[0]):
    kT_BKHS = jax.lax.dynamic_update_slice(
        kT_BKHS, k_BKH[row, :, :, None].astype(kT_BKHS.dtype)[None], (row, 0, 0, pos_B[row]))
    v_BKSH = jax.lax.dynamic_update_slice(
        v_BKSH, v_BKH[row, :, None].astype(v_BKSH.dtype)[None], (row, 0, pos_B[row], 0))
  return kT_BKHS, v_BKSH


class Head(nnx.Module):
  """Final RMSNorm and LM head. With tied embeddings the head has no kernel
  of its own and takes the embedding table as an argument."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, jnp_dtype(cfg.dtype))
    self.lm_head = (None if cfg.tie_embeddings
                    else Dense(cfg, cfg.hidden_size, cfg.vocab_size, ("vocab", "embed"), rngs))

  def __call__(self, x: jax.Array, table_VD: jax.Array | None = None) -> jax.Array:
    """x [..., D] -> float32 logits [..., V]."""
    h = self.norm(x)
    if self.lm_head is None:
      return jnp.einsum("...d,vd->...v", h, table_VD, preferred_element_type=jnp.float32)
    return self.lm_head(h).astype(jnp.float32)


class Llama(nnx.Module):
  """The whole decoder: ``embed``, ``layers`` (nnx.List of Block), ``head``."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp_dtype(cfg.dtype)
    self.embed = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=dt, rngs=rngs,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"),
                                            eager_sharding=False))
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.head = Head(cfg, rngs)

  def logits(self, x: jax.Array) -> jax.Array:
    table = self.embed.embedding[...] if self.cfg.tie_embeddings else None
    return self.head(x, table)

  def __call__(self, tokens_BT: jax.Array, chunk: int = 512) -> jax.Array:
    """Full causal forward: int tokens [B, T] -> float32 logits [B, T, V]."""
    t = tokens_BT.shape[1]
    cos, sin = attention.rope_tables(self.cfg, jnp.arange(t)[None, :])
    x = self.embed(tokens_BT)
    for block in self.layers:
      x, _, _ = block.prefill(x, cos, sin, chunk)
    return self.logits(x)


def init_model(cfg: ModelConfig, seed: int = 0) -> Llama:
  """A randomly initialised model (normal(0.02) weights, unit norms)."""
  return Llama(cfg, nnx.Rngs(seed))
