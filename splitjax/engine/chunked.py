"""Chunked prefill (Sarathi-style) pieces of the engine's fused "mixed step".

A prompt is filled into an inactive decode slot chunk by chunk; each chunk
rides along with the decode step of the active slots in one program
(``Engine.mixed_step``), so the dense weights are read once for both. This
module holds the host-side description and batching of chunks
(:class:`ChunkSpec` -> :class:`ChunkBatch`) and the device-side update of the
decode state after a mixed step (:func:`advance_state`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from splitjax.config import SamplingConfig
from splitjax.engine.types import DecodeState, PromptError
from splitjax.model.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class ChunkSpec:
  """One prefill chunk (plain python, host side).

  slot: decode slot the prompt is being filled into (inactive until its last chunk).
  tokens: the chunk's token ids (at least one).
  start: position of the chunk's first token = prompt tokens already cached in the slot.
  last: the chunk ends the prompt: its last position's token is sampled and the slot activated.
  sampling: used when ``last`` (default greedy).
  """
  slot: int
  tokens: Sequence[int]
  start: int
  last: bool
  sampling: SamplingConfig | None = None


@dataclasses.dataclass(frozen=True)
class ChunkBatch:
  """Host-side padded chunk batch (the chunk analogue of PrefillBatch).

  tokens_PC: int32 [P, C], right-padded with 0; C is a prefill bucket, P the
    next power of two >= the number of chunks.
  slots_P, starts_P: int32 [P] slot and first position of each chunk.
  lengths_P: int32 [P] valid tokens; 0 for padding rows (which write nothing).
  last_P: bool [P] the chunk ends its prompt.
  num_real: rows [0, num_real) are real chunks.
  sampling: SamplingParams of [P] host arrays (greedy for non-last/padding rows).
  """
  tokens_PC: np.ndarray
  slots_P: np.ndarray
  starts_P: np.ndarray
  lengths_P: np.ndarray
  last_P: np.ndarray
  num_real: int
  sampling: SamplingParams

  @property
  def shape(self) -> tuple[int, int]:
    return self.tokens_PC.shape


def _check_spec(i: int, c: ChunkSpec, vocab_size: int, num_slots: int, max_cache_len: int,
                max_bucket: int) -> np.ndarray:
  """The chunk's tokens as an int array, or PromptError naming chunk ``i``'s problem."""
  arr = np.asarray(c.tokens)
  n = arr.shape[0] if arr.ndim == 1 else 0
  if arr.ndim != 1 or n == 0:
    raise PromptError(f"chunk {i}: empty chunk; at least one token id is required")
  if not np.issubdtype(arr.dtype, np.integer):
    raise PromptError(f"chunk {i}: token ids must be integers, got dtype {arr.dtype}")
  bad = arr[(arr < 0) | (arr >= vocab_size)]
  if bad.size:
    raise PromptError(f"chunk {i}: token id {int(bad[0])} is out of vocabulary [0, {vocab_size})")
  if not 0 <= c.slot < num_slots:
    raise PromptError(f"chunk {i}: slot {c.slot} is not a decode slot [0, {num_slots})")
  if c.start < 0 or c.start + n > max_cache_len:
    raise PromptError(f"chunk {i}: positions [{c.start}, {c.start + n}) exceed the cache "
                      f"length of {max_cache_len} positions")
  if n > max_bucket:
    raise PromptError(f"chunk {i}: {n} tokens exceed the largest prefill bucket ({max_bucket})")
  return arr


def make_chunk_batch(specs: list[ChunkSpec], *, vocab_size: int, num_slots: int,
                     max_cache_len: int, buckets: Sequence[int],
                     batch_size: int | None = None) -> ChunkBatch:
  """Validates ``specs`` and pads them into a ChunkBatch (see Engine.make_chunks).

  C = the smallest bucket >= the longest chunk (capped at max_cache_len);
  P = ``batch_size`` (>= len(specs)) or the next power of two >= len(specs).
  Raises PromptError for no chunks,
  an empty chunk, out-of-vocabulary ids, a bad slot, a chunk reaching past
  ``max_cache_len``, a chunk longer than the largest bucket, or two chunks
  for the same slot.
  """
  if not specs:
    raise PromptError("no chunks given (a step without chunks is a plain decode step)")
  max_bucket = min(buckets[-1], max_cache_len)
  arrs = [_check_spec(i, c, vocab_size, num_slots, max_cache_len, max_bucket)
          for i, c in enumerate(specs)]
  slots = [c.slot for c in specs]
  if len(set(slots)) != len(slots):
    dup = next(s for s in slots if slots.count(s) > 1)
    raise PromptError(f"two chunks for slot {dup}: a step takes at most one chunk per slot")
  longest = max(a.shape[0] for a in arrs)
  c_len = min(next(b for b in buckets if b >= longest), max_cache_len)
  p = max(batch_size or 1 << (len(specs) - 1).bit_length(), len(specs))
  tokens = np.zeros((p, c_len), np.int32)
  slots_P, starts, lengths = (np.zeros(p, np.int32) for _ in range(3))
  last = np.zeros(p, bool)
  for i, (c, a) in enumerate(zip(specs, arrs)):
    tokens[i, :a.shape[0]] = a
    slots_P[i], starts[i], lengths[i], last[i] = c.slot, c.start, a.shape[0], c.last
  sampling = SamplingParams.stack(
      [(c.sampling or SamplingConfig()) if c.last else SamplingConfig() for c in specs], p)
  return ChunkBatch(tokens, slots_P, starts, lengths, last, len(specs), sampling)


def advance_state(state: DecodeState, ks: tuple, vs: tuple, tok_B: jax.Array,
                  first_P: jax.Array, chunks: tuple) -> DecodeState:
  """The decode state after a mixed step (traced inside the mixed program).

  Active slots advance exactly as in decode (length + 1, token = tok_B).
  Then each real chunk row sets its slot's length to start + length and its
  active flag to ``last``; last chunks also set the slot's token (first_P)
  and sampling parameters. Padding rows (length 0) change nothing.
  chunks = (slots_P, starts_P, lengths_P, last_P, sampling_P) device arrays.
  """
  slots_P, starts_P, lengths_P, last_P, sp_P = chunks
  b = state.lengths_B.shape[0]
  active, pos = state.active_B, state.lengths_B
  lengths = jnp.where(active, pos + 1, pos)
  tokens = jnp.where(active, tok_B, state.tokens_B)
  real = lengths_P > 0
  slot_r = jnp.where(real, slots_P, b)              # b: out of range -> dropped
  slot_l = jnp.where(real & last_P, slots_P, b)
  lengths = lengths.at[slot_r].set(starts_P + lengths_P, mode="drop")
  active = active.at[slot_r].set(last_P, mode="drop")
  tokens = tokens.at[slot_l].set(first_P, mode="drop")
  sp = jax.tree.map(lambda d, s: d.at[slot_l].set(s, mode="drop"), state.sampling, sp_P)
  return DecodeState(tuple(ks), tuple(vs), lengths, tokens, active, sp)
