"""Batch generation over two engines: prefill on one mesh, decode on another.

This is the simplest complete use of the engine contract (no scheduler):
prompts are served in waves of up to ``decode_slots``; each wave is prefilled
as one padded batch, its KV moved to the decode mesh (SPLIT mode), inserted
into slots, and decoded for a fixed number of tokens. The coordinator in
``splitjax.scheduling`` / ``splitjax.runtime`` does continuous batching.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from splitjax import mesh as mesh_lib
from splitjax import transfer
from splitjax.config import GenerateConfig, GenerateMode, SamplingConfig
from splitjax.engine.engine import Engine
from splitjax.model.params import ModelDefs, Params


@dataclasses.dataclass(frozen=True)
class GenerateResult:
  """tokens: new token ids per prompt (``max_new_tokens`` each).
  prefill_s / decode_s: wall seconds to the first tokens / for the decode steps
  (summed over waves); kv_bytes: KV bytes produced by prefill (and moved in
  SPLIT mode)."""
  tokens: list[list[int]]
  prefill_s: float
  decode_s: float
  kv_bytes: int


class Generator:
  """Generates with a prefill engine and a decode engine (the same in SINGLE mode)."""

  def __init__(self, cfg: GenerateConfig, defs: ModelDefs, params: Params,
               devices: list | None = None):
    self.cfg = cfg
    prefill_mesh = mesh_lib.make_mesh(cfg.prefill_mesh, devices)
    self.prefill_engine = Engine(defs, cfg.engine, prefill_mesh)
    self.prefill_params = self.prefill_engine.place_params(params)
    if cfg.mode == GenerateMode.SPLIT:
      decode_mesh = mesh_lib.make_mesh(cfg.decode_mesh, devices)
      mesh_lib.check_disjoint(prefill_mesh, decode_mesh)
      self.decode_engine = Engine(defs, cfg.engine, decode_mesh)
      self.decode_params = self.decode_engine.place_params(params)
    else:
      self.decode_engine, self.decode_params = self.prefill_engine, self.prefill_params

  def generate(self, prompts: list[list[int]], max_new_tokens: int | None = None,
               sampling: SamplingConfig | None = None) -> GenerateResult:
    """Generates ``max_new_tokens`` tokens for every prompt.

    Raises engine.PromptError (before any work) if a prompt is empty, holds
    an out-of-vocabulary id, or does not fit the context with its new tokens.
    """
    n_new = max_new_tokens or self.cfg.max_new_tokens
    sampling = sampling or self.cfg.sampling
    for p in prompts:  # both engines share model and engine config: one check suffices
      self.decode_engine.validate_prompt(p, n_new)
    key = jax.random.key(sampling.seed)
    slots = self.decode_engine.cfg.decode_slots
    out: list[list[int]] = []
    prefill_s = decode_s = 0.0
    kv_bytes = 0
    for w, start in enumerate(range(0, len(prompts), slots)):
      wave = prompts[start:start + slots]
      tokens, t_prefill, t_decode, nbytes = self._wave(wave, n_new, sampling, wave_key(key, w))
      out.extend(tokens)
      prefill_s += t_prefill
      decode_s += t_decode
      kv_bytes += nbytes
    return GenerateResult(out, prefill_s, decode_s, kv_bytes)

  def _prefill_groups(self, prompts: list[list[int]]) -> list[list[int]]:
    return prefill_groups(self.prefill_engine, prompts, self.cfg.prefill_token_budget)

  def _wave(self, prompts, n_new: int, sampling: SamplingConfig, key):
    pe, de = self.prefill_engine, self.decode_engine
    t0 = time.perf_counter()
    state = de.init_decode_state()
    first = np.zeros(len(prompts), np.int64)
    firsts, kv_bytes = [], 0
    for j, rows in enumerate(self._prefill_groups(prompts)):
      batch = pe.make_batch([prompts[r] for r in rows], [sampling] * len(rows))
      k = group_key(key, j)
      if de is pe:
        prefix = pe.prefill(self.prefill_params, batch, k)
      else:
        prefix = transfer.prefill_and_transfer(pe, de, self.prefill_params, batch, k,
                                               self.cfg.transfer)
      for i, r in enumerate(rows):
        state = de.insert(prefix, state, i, r)   # slot r = row r of the wave
      firsts.append((rows, prefix.first_token_B))
      kv_bytes += prefix.kv_nbytes
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    steps = []
    for i in range(n_new - 1):
      state, toks = de.decode(self.decode_params, state, step_key(key, i))
      steps.append(toks)
    for rows, tokens in firsts:
      first[rows] = np.asarray(tokens)[:len(rows)]
    host = np.concatenate([first[:, None]] + [np.asarray(s)[:len(prompts), None] for s in steps],
                          axis=1)
    t2 = time.perf_counter()
    return host.tolist(), t1 - t0, t2 - t1, kv_bytes


def prefill_groups(engine: Engine, prompts: list[list[int]], budget: int) -> list[list[int]]:
  """Consecutive row indices whose padded batch on ``engine`` fits ``budget`` tokens."""
  groups: list[list[int]] = []
  for i in range(len(prompts)):
    if groups:
      rows = groups[-1] + [i]
      b, t = engine.padded_shape([len(prompts[r]) for r in rows])
      if b * t <= budget:
        groups[-1] = rows
        continue
    groups.append([i])
  return groups


def wave_key(key: jax.Array, wave: int) -> jax.Array:
  """PRNG key of wave ``wave`` (every driver of these waves derives keys alike,
  so split, single and multi-process runs sample the same tokens)."""
  return jax.random.fold_in(key, wave)


def group_key(wave_key_: jax.Array, group: int) -> jax.Array:
  """Key of prefill group ``group`` of a wave."""
  return jax.random.fold_in(jax.random.fold_in(wave_key_, 0), group)


def step_key(wave_key_: jax.Array, step: int) -> jax.Array:
  """Key of decode step ``step`` (0-based) of a wave."""
  return jax.random.fold_in(wave_key_, step + 1)
