"""Records passed between the engine programs (all pytrees of jax.Arrays).

Canonical KV layout everywhere: ``[L, B, K, T, H]`` (layers, batch, KV heads,
positions, head dim), KV heads sharded over the mesh's ``tp`` axis.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from splitjax.model.sampling import SamplingParams


class PromptError(ValueError):
  """A prompt cannot be served (empty, too long, token id out of vocabulary)."""


class KVLayoutError(ValueError):
  """A KV prefix does not match the layout the receiving engine expects."""


@dataclasses.dataclass(frozen=True)
class KVLayout:
  """What a decode engine accepts: per-layer K/V of [K, T, H] in ``dtype``."""
  num_layers: int
  num_kv_heads: int
  head_dim: int
  dtype: np.dtype

  def check(self, prefix: "Prefix") -> None:
    """Raises KVLayoutError unless ``prefix`` matches this layout exactly."""
    layers = 0
    for i, g in enumerate(prefix.kv):
      for name, arr in (("k", g.k_LBKTH), ("v", g.v_LBKTH)):
        if arr.ndim != 5 or arr.shape[2] != self.num_kv_heads or arr.shape[4] != self.head_dim:
          raise KVLayoutError(
              f"KV group {i} {name}: shape {arr.shape} is not [L, B, K={self.num_kv_heads}, "
              f"T, H={self.head_dim}]")
        if np.dtype(arr.dtype) != np.dtype(self.dtype):
          raise KVLayoutError(f"KV group {i} {name}: dtype {arr.dtype}, expected {self.dtype}")
      if g.k_LBKTH.shape != g.v_LBKTH.shape:
        raise KVLayoutError(f"KV group {i}: k {g.k_LBKTH.shape} != v {g.v_LBKTH.shape}")
      layers += g.k_LBKTH.shape[0]
    if layers != self.num_layers:
      raise KVLayoutError(f"KV prefix has {layers} layers, expected {self.num_layers}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVGroup:
  """K and V of consecutive layers for a prefill batch: [Lg, B, K, T, H] each."""
  k_LBKTH: jax.Array
  v_LBKTH: jax.Array

  @property
  def num_layers(self) -> int:
    return self.k_LBKTH.shape[0]

  @property
  def nbytes(self) -> int:
    return self.k_LBKTH.nbytes + self.v_LBKTH.nbytes


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Prefix:
  """Result of a prefill: what ``insert`` needs to start decoding a batch.

  kv: layer groups in layer order (one group when prefill ran as one program).
  first_token_B: int32 token sampled from the last prompt position.
  lengths_B: int32 prompt lengths (valid positions of the KV; rest is padding).
  sampling: per-row sampling parameters, carried into the decode slots.
  """
  kv: tuple[KVGroup, ...]
  first_token_B: jax.Array
  lengths_B: jax.Array
  sampling: SamplingParams

  @property
  def padded_len(self) -> int:
    return self.kv[0].k_LBKTH.shape[3]

  @property
  def kv_nbytes(self) -> int:
    return sum(g.nbytes for g in self.kv)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  """Everything a decode engine carries between steps (donated each step).

  k: one [B, K, H, S] buffer per layer (keys transposed: B = slots, S = max
    cache length); v: one [B, K, S, H] buffer per layer. Separate per-layer
    buffers, not one stacked [L, ...] array: XLA cannot alias a slice, so
    reading layer l of a stacked cache copies it every step and the in-place
    update is lost (measured 17x slower). Prefixes arrive in the canonical
    [L, B, K, T, H] layout; ``insert`` transposes the keys of one row.
  lengths_B: int32 number of cached positions per slot (next write position).
  tokens_B: int32 last sampled token per slot (input of the next step).
  active_B: bool; inactive slots are computed but never advance.
  sampling: per-slot sampling parameters.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths_B: jax.Array
  tokens_B: jax.Array
  active_B: jax.Array
  sampling: SamplingParams
