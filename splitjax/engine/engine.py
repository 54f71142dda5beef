"""Compiled prefill / insert / decode programs of one model replica on one mesh.

The contract, in the spirit of JetStream's engine API:

  prefix = engine.prefill(params, batch, key)            # prompt -> first token + KV
  prefix = transfer.to_engine(prefix, decode_engine)      # (split mode only)
  state  = engine.insert(prefix, state, row, slot)        # KV row -> decode slot (donated)
  state, tokens_B = engine.decode(params, state, key)     # one step (donated)

Co-located chunked prefill (Sarathi-style) fuses a decode step with prefill
chunks filled into inactive slots (see ``splitjax.engine.chunked``):

  chunks = engine.make_chunks([ChunkSpec(slot, tokens, start, last), ...])
  state, tokens_B, first_P = engine.mixed_step(params, state, chunks, key)

Every program is one ``jax.jit`` with explicit in/out shardings on this
engine's mesh and static shapes from bounded buckets: prompt length and
prefill batch are padded up to buckets; decode has one shape per engine
(slots x max cache length). ``prefill(..., layerwise=True)`` runs the same math as a
chain of layer-group programs so each group's KV is ready (and can be copied
to another mesh) while later groups still compute.

State is explicit: params, caches and PRNG keys are passed in and returned.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from splitjax import mesh as mesh_lib
from splitjax.config import ConfigError, EngineConfig, SamplingConfig
from splitjax.engine import chunked
from splitjax.engine.chunked import ChunkBatch, ChunkSpec  # noqa: F401  (re-exported)
from splitjax.engine.types import DecodeState, KVGroup, KVLayout, Prefix, PromptError
from splitjax.model.attention import rope_tables
from splitjax.model.llama import jnp_dtype
from splitjax.model.params import ModelDefs, Params
from splitjax.model.sampling import SamplingParams, sample


@dataclasses.dataclass(frozen=True)
class PrefillBatch:
  """Host-side padded prompt batch.

  tokens_BT: int32 [B, T], right-padded with 0; T is a prefill bucket.
  lengths_B: int32 [B]; padding rows have length 1 (a single token 0).
  num_real: rows [0, num_real) are real prompts, the rest batch padding.
  sampling: per-row sampling parameters (host arrays).
  """
  tokens_BT: np.ndarray
  lengths_B: np.ndarray
  num_real: int
  sampling: SamplingParams


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, math.ceil(math.log2(max(n, 1))))


class Engine:
  """Programs for one replica of ``defs.cfg`` on ``mesh`` (see module doc)."""

  def __init__(self, defs: ModelDefs, cfg: EngineConfig, mesh: Mesh):
    mesh_lib.check_model_fits(defs.cfg, mesh)
    self.defs, self.cfg, self.mesh = defs, cfg, mesh
    self.model = defs.cfg
    # Positions per decode slot: the configured length, never past the model's.
    self.max_cache_len = min(cfg.max_cache_len or self.model.max_seq_len,
                             self.model.max_seq_len)
    self.dp = mesh.shape["dp"]
    if cfg.decode_slots % self.dp:
      raise ConfigError(f"engine.decode_slots ({cfg.decode_slots}) must be a multiple of dp={self.dp}")
    self.kv_layout = KVLayout(self.model.num_layers, self.model.num_kv_heads,
                              self.model.head_dim, np.dtype(jnp_dtype(self.model.dtype)))
    self.kv_sharding = NamedSharding(mesh, mesh_lib.kv_spec())
    self.cache_sharding = NamedSharding(mesh, mesh_lib.cache_spec())
    self.rep = mesh_lib.replicated(mesh)
    # Layer-wise prefill runs ceil(L / group_size) programs. Auto: 4 groups,
    # so at most a quarter of the KV is copied after the last group. Measured
    # on CPU (small, T=2048): one layer per group costs ~20% over the single
    # program, 3 layers per group ~6% (see scripts/bench_engine.py).
    self.group_size = cfg.layer_group_size or max(1, math.ceil(self.model.num_layers / 4))
    self._param_sh = None
    self._programs: dict = {}

  # ------------------------------------------------------------------ params
  def place_params(self, params: Params) -> Params:
    """Copies/reshards ``params`` onto this mesh (per ``mesh.LOGICAL_RULES``)."""
    return jax.device_put(params, self._params_sh(params))

  def _params_sh(self, params: Params) -> Params:
    if self._param_sh is None:
      self._param_sh = mesh_lib.param_shardings(self.defs, params, self.mesh)
    return self._param_sh

  # ------------------------------------------------------------------ batching
  def bucket_for(self, length: int) -> int:
    """Padded length for a prompt: the smallest bucket >= length, capped at the
    cache length so every prefix fits a decode slot."""
    fits = [b for b in self.cfg.prefill_buckets if b >= length]
    if not fits or length > self.max_cache_len:
      raise PromptError(f"prompt of {length} tokens exceeds the largest prefill bucket "
                        f"({min(self.cfg.prefill_buckets[-1], self.max_cache_len)})")
    return min(fits[0], self.max_cache_len)

  def validate_prompt(self, prompt: list[int] | np.ndarray, max_new_tokens: int = 0) -> None:
    """Raises PromptError naming the problem, or returns None."""
    n = len(prompt)
    if n == 0:
      raise PromptError("empty prompt: at least one token id is required")
    limit = self.max_cache_len
    if n + max_new_tokens > limit:
      raise PromptError(f"prompt of {n} tokens + {max_new_tokens} new tokens exceeds the "
                        f"context limit of {limit} tokens")
    arr = np.asarray(prompt)
    if not np.issubdtype(arr.dtype, np.integer):
      raise PromptError(f"token ids must be integers, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= self.model.vocab_size)]
    if bad.size:
      raise PromptError(f"token id {int(bad[0])} is out of vocabulary "
                        f"[0, {self.model.vocab_size})")
    self.bucket_for(n)

  def padded_shape(self, lengths: list[int], batch_size: int | None = None) -> tuple[int, int]:
    """(batch, tokens) that prompts of ``lengths`` are padded to: the batch to
    ``batch_size`` or the next power of two, a multiple of dp; the length to
    its bucket."""
    n = len(lengths)
    b = -(-max(batch_size or _pow2_at_least(n), n) // self.dp) * self.dp
    return b, self.bucket_for(max(lengths))

  def make_batch(self, prompts: list, sampling: list[SamplingConfig] | None = None,
                 batch_size: int | None = None) -> PrefillBatch:
    """Validates and right-pads prompts into a bucketed PrefillBatch.

    ``sampling`` gives one SamplingConfig per prompt (default greedy). The
    batch dimension is padded to ``batch_size`` or to the next power of two
    (and a multiple of dp), so few batch shapes are ever compiled.
    """
    if not prompts:
      raise PromptError("no prompts given")
    for p in prompts:
      self.validate_prompt(p)
    n = len(prompts)
    b, t = self.padded_shape([len(p) for p in prompts], batch_size)
    tokens = np.zeros((b, t), np.int32)
    lengths = np.ones((b,), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
      lengths[i] = len(p)
    return PrefillBatch(tokens, lengths, n, SamplingParams.stack(list(sampling or []), b))

  # ------------------------------------------------------------------ prefill
  def prefill(self, params: Params, batch: PrefillBatch, key: jax.Array, *,
              layerwise: bool = False) -> Prefix:
    """Prompt batch -> Prefix (first token + KV) on this mesh. Non-blocking.

    layerwise=False: one program. layerwise=True: embed, then one program per
    group of ``self.group_size`` layers, then the head; identical results.
    """
    args = (batch.tokens_BT, batch.lengths_B, batch.sampling)
    if not layerwise:
      return self._program(_Prog.PREFILL, params)(params, *args, key)
    x = self._program(_Prog.EMBED, params)(params.embed, batch.tokens_BT)
    groups = []
    for lo in range(0, self.model.num_layers, self.group_size):
      layers = params.layers[lo:lo + self.group_size]
      x, group = self._program(_Prog.GROUP, params, len(layers))(layers, x)
      groups.append(group)
    first = self._program(_Prog.HEAD, params)(params, x, batch.lengths_B, batch.sampling, key)
    return Prefix(tuple(groups), first, jax.device_put(batch.lengths_B, self.rep),
                  jax.device_put(batch.sampling, self.rep))

  def _run_layers(self, layers, x_BTD):
    t = x_BTD.shape[1]
    cos, sin = rope_tables(self.model, jnp.arange(t)[None, :])
    ks, vs = [], []
    for layer in layers:
      x_BTD, k, v = self.defs.block_mod(layer).prefill(x_BTD, cos, sin, self.cfg.attention_chunk)
      ks.append(k)
      vs.append(v)
    return x_BTD, KVGroup(jnp.stack(ks), jnp.stack(vs))

  def _first_token(self, params, x_BTD, lengths_B, sp, key):
    last = jnp.take_along_axis(x_BTD, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    return sample(self.defs.logits(params, last), key, sp)

  def _prefill_fn(self, params, tokens_BT, lengths_B, sp, key):
    x = self.defs.embed_mod(params.embed)(tokens_BT)
    x, group = self._run_layers(params.layers, x)
    return Prefix((group,), self._first_token(params, x, lengths_B, sp, key), lengths_B, sp)

  # ------------------------------------------------------------------ decode
  def init_decode_state(self) -> DecodeState:
    """Empty decode state: zero cache, no active slot, greedy sampling."""
    m, s = self.model, self.cfg.decode_slots
    k_shape = (s, m.num_kv_heads, m.head_dim, self.max_cache_len)   # keys transposed
    v_shape = (s, m.num_kv_heads, self.max_cache_len, m.head_dim)
    dt, n = jnp_dtype(m.dtype), m.num_layers
    zeros = jax.jit(lambda: tuple(jnp.zeros(k_shape if i < n else v_shape, dt)
                                  for i in range(2 * n)),
                    out_shardings=(self.cache_sharding,) * (2 * n))()
    bsh = mesh_lib.batch_sharding(self.mesh)
    host = (np.zeros(s, np.int32), np.zeros(s, np.int32), np.zeros(s, bool),
            SamplingParams.stack([], s))
    lengths, tokens, active, sp = jax.device_put(host, bsh)
    return DecodeState(zeros[:n], zeros[n:], lengths, tokens, active, sp)

  def insert(self, prefix: Prefix, state: DecodeState, row: int, slot: int) -> DecodeState:
    """Copies prefix row ``row`` into decode slot ``slot`` and activates it.

    ``state`` is donated: do not use it afterwards. ``prefix`` must already be
    on this engine's mesh (see ``splitjax.transfer``).
    """
    if prefix.padded_len > self.max_cache_len:
      raise PromptError(f"prefix of {prefix.padded_len} positions does not fit a cache "
                        f"of {self.max_cache_len}")
    self.kv_layout.check(prefix)
    return self._program(_Prog.INSERT, None, len(prefix.kv))(prefix, state, np.int32(row),
                                                           np.int32(slot))

  def release(self, state: DecodeState, slot: int) -> DecodeState:
    """Deactivates ``slot`` (donates ``state``); its cache is simply overwritten later."""
    return self._program(_Prog.RELEASE, None)(state, np.int32(slot))

  def decode(self, params: Params, state: DecodeState,
             key: jax.Array) -> tuple[DecodeState, jax.Array]:
    """One decode step for every slot; ``state`` is donated.

    Active slots write their token's KV at position ``lengths_B`` (in place),
    attend over positions <= that, sample the next token and advance.
    Returns (new state, int32 tokens_B); inactive slots' tokens are
    meaningless. The caller must not step a slot whose length reached
    ``max_cache_len`` (its write would be dropped).
    """
    return self._program(_Prog.DECODE, params, False)(params, state, key)

  def decode_with_logits(self, params: Params, state: DecodeState, key: jax.Array
                         ) -> tuple[DecodeState, jax.Array, jax.Array]:
    """:meth:`decode` that also returns the step's float32 logits [slots, V]
    (a separate program; for tests and scoring, not the serving hot path)."""
    return self._program(_Prog.DECODE, params, True)(params, state, key)

  def _insert_fn(self, prefix: Prefix, state: DecodeState, row, slot):
    ks, vs = [], []
    for g in prefix.kv:
      for j in range(g.num_layers):
        layer = len(ks)
        k_row = jax.lax.dynamic_slice_in_dim(g.k_LBKTH[j], row, 1, axis=0)   # [1, K, T, H]
        v_row = jax.lax.dynamic_slice_in_dim(g.v_LBKTH[j], row, 1, axis=0)
        k_cache, v_cache = state.k[layer], state.v[layer]
        ks.append(jax.lax.dynamic_update_slice(
            k_cache, k_row.transpose(0, 1, 3, 2).astype(k_cache.dtype), (slot, 0, 0, 0)))
        vs.append(jax.lax.dynamic_update_slice(
            v_cache, v_row.astype(v_cache.dtype), (slot, 0, 0, 0)))
    put = lambda dst, src: dst.at[slot].set(src[row])
    sp = jax.tree.map(put, state.sampling, prefix.sampling)
    return DecodeState(tuple(ks), tuple(vs), put(state.lengths_B, prefix.lengths_B),
                       put(state.tokens_B, prefix.first_token_B),
                       state.active_B.at[slot].set(True), sp)

  def _release_fn(self, state: DecodeState, slot):
    return dataclasses.replace(state, active_B=state.active_B.at[slot].set(False))

  def _decode_fn(self, with_logits: bool, params, state: DecodeState, key):
    pos = state.lengths_B
    x = self.defs.embed_mod(params.embed)(state.tokens_B)
    cos, sin = rope_tables(self.model, pos)
    ks, vs = [], []
    for layer, k, v in zip(params.layers, state.k, state.v):
      x, k, v = self.defs.block_mod(layer).decode(x, cos, sin, pos, k, v)
      ks.append(k)
      vs.append(v)
    logits = self.defs.logits(params, x)
    tok = sample(logits, key, state.sampling)
    active = state.active_B
    new = DecodeState(tuple(ks), tuple(vs), jnp.where(active, pos + 1, pos),
                      jnp.where(active, tok, state.tokens_B), active, state.sampling)
    return (new, tok, logits) if with_logits else (new, tok)

  # ------------------------------------------------------------------ mixed
  def make_chunks(self, specs: list[ChunkSpec], batch_size: int | None = None) -> ChunkBatch:
    """Validates and pads prefill chunks into a ChunkBatch [P, C]: C a prefill
    bucket, P = ``batch_size`` or the next power of two (padding rows have
    length 0). PromptError names a bad chunk (see chunked.make_chunk_batch)."""
    return chunked.make_chunk_batch(specs, vocab_size=self.model.vocab_size,
                                    num_slots=self.cfg.decode_slots,
                                    max_cache_len=self.max_cache_len,
                                    buckets=self.cfg.prefill_buckets, batch_size=batch_size)

  def mixed_step(self, params: Params, state: DecodeState, chunks: ChunkBatch, key: jax.Array
                 ) -> tuple[DecodeState, jax.Array, jax.Array]:
    """One decode step for every active slot fused with prefill chunks; ``state`` is donated.

    Active slots: exactly :meth:`decode`. Chunk row p writes the KV of its
    ``lengths_P[p]`` tokens at positions [start, start + len) of slot
    ``slots_P[p]`` (each attending causally over the slot's earlier positions)
    and sets the slot's length to start + len; a last chunk samples the first
    token from its last position with its own sampling parameters (one
    ``sample`` over decode and chunk rows with ``key``) and activates the slot.
    Chunk slots must be inactive at entry and a later chunk must start at
    the slot's length (where the previous chunk left it). Dense projections
    run once over all slots + P*C tokens. One program per (P, C).
    Returns (new state, int32 tokens_B [slots] as in decode, int32 first_P [P],
    meaningful for last chunks only).
    """
    args = (chunks.tokens_PC, chunks.slots_P, chunks.starts_P, chunks.lengths_P, chunks.last_P,
            chunks.sampling)
    return self._program(_Prog.MIXED, params, *chunks.shape)(params, state, *args, key)

  def _mixed_fn(self, params, state: DecodeState, tokens_PC, slots_P, starts_P, lengths_P,
                last_P, sp_P, key):
    b, (p, c) = state.tokens_B.shape[0], tokens_PC.shape
    pos_B = state.lengths_B
    pos_PC = starts_P[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]
    valid_PC = jnp.arange(c)[None, :] < lengths_P[:, None]
    x = self.defs.embed_mod(params.embed)(jnp.concatenate([state.tokens_B, tokens_PC.reshape(-1)]))
    cos, sin = rope_tables(self.model, jnp.concatenate([pos_B, pos_PC.reshape(-1)]))
    ks, vs = [], []
    for layer, k, v in zip(params.layers, state.k, state.v):
      x, k, v = self.defs.block_mod(layer).mixed(x, cos, sin, pos_B, k, v, slots_P, pos_PC,
                                                 valid_PC, self.cfg.attention_chunk)
      ks.append(k)
      vs.append(v)
    last_rows = b + jnp.arange(p) * c + jnp.maximum(lengths_P - 1, 0)
    rows = jnp.concatenate([x[:b], x[last_rows]])
    sp = jax.tree.map(lambda d, q: jnp.concatenate([d, q]), state.sampling, sp_P)
    tok = sample(self.defs.logits(params, rows), key, sp)
    new = chunked.advance_state(state, ks, vs, tok[:b], tok[b:],
                                (slots_P, starts_P, lengths_P, last_P, sp_P))
    return new, tok[:b], tok[b:]

  # ------------------------------------------------------------------ compile
  def _program(self, prog: "_Prog", params, *static):
    """The jitted program ``prog`` (built once per static arguments)."""
    key = (prog, *static)
    if key not in self._programs:
      self._programs[key] = getattr(self, f"_build_{prog.value}")(params, *static)
    return self._programs[key]

  def _shardings(self):
    rep, bsh = self.rep, mesh_lib.batch_sharding(self.mesh)
    layers = (self.cache_sharding,) * self.model.num_layers
    return dict(
        rep=rep, tokens=mesh_lib.batch_sharding(self.mesh, 2),
        x=mesh_lib.batch_sharding(self.mesh, 3),
        kv=KVGroup(self.kv_sharding, self.kv_sharding), sp=SamplingParams(rep, rep, rep),
        state=DecodeState(layers, layers, bsh, bsh, bsh, SamplingParams(bsh, bsh, bsh)))

  def _build_prefill(self, params):
    sh = self._shardings()
    return jax.jit(self._prefill_fn,
                   in_shardings=(self._params_sh(params), sh["tokens"], sh["rep"], sh["sp"],
                                 sh["rep"]),
                   out_shardings=Prefix((sh["kv"],), sh["rep"], sh["rep"], sh["sp"]))

  def _build_embed(self, params):
    sh = self._shardings()
    return jax.jit(lambda e, t: self.defs.embed_mod(e)(t),
                   in_shardings=(self._params_sh(params).embed, sh["tokens"]),
                   out_shardings=sh["x"])

  def _build_group(self, params, n_layers: int):
    sh = self._shardings()
    return jax.jit(self._run_layers,
                   in_shardings=(self._params_sh(params).layers[:n_layers], sh["x"]),
                   out_shardings=(sh["x"], sh["kv"]), donate_argnums=1)

  def _build_head(self, params):
    sh = self._shardings()
    return jax.jit(self._first_token,
                   in_shardings=(self._params_sh(params), sh["x"], sh["rep"], sh["sp"],
                                 sh["rep"]),
                   out_shardings=sh["rep"])

  def _build_insert(self, _params, n_groups: int):
    sh = self._shardings()
    prefix_sh = Prefix((sh["kv"],) * n_groups, sh["rep"], sh["rep"], sh["sp"])
    return jax.jit(self._insert_fn, in_shardings=(prefix_sh, sh["state"], sh["rep"], sh["rep"]),
                   out_shardings=sh["state"], donate_argnums=1)

  def _build_release(self, _params):
    sh = self._shardings()
    return jax.jit(self._release_fn, in_shardings=(sh["state"], sh["rep"]),
                   out_shardings=sh["state"], donate_argnums=0)

  def _build_decode(self, params, with_logits: bool):
    sh = self._shardings()
    outs = (sh["state"], sh["rep"], sh["rep"]) if with_logits else (sh["state"], sh["rep"])
    return jax.jit(functools.partial(self._decode_fn, with_logits),
                   in_shardings=(self._params_sh(params), sh["state"], sh["rep"]),
                   out_shardings=outs, donate_argnums=1)

  def _build_mixed(self, params, _p: int, _c: int):
    sh, rep = self._shardings(), self.rep
    return jax.jit(self._mixed_fn,
                   in_shardings=(self._params_sh(params), sh["state"], rep, rep, rep, rep, rep,
                                 sh["sp"], rep),
                   out_shardings=(sh["state"], rep, rep), donate_argnums=1)


class _Prog(enum.Enum):
  """The compiled programs of an Engine (value = builder suffix)."""
  PREFILL = "prefill"
  EMBED = "embed"
  GROUP = "group"
  HEAD = "head"
  INSERT = "insert"
  RELEASE = "release"
  DECODE = "decode"
  MIXED = "mixed"
