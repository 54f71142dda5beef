"""Named model shapes.

``tiny`` and ``small`` are runnable on CPU (random weights or imported);
``llama2-7b``, ``llama2-70b`` and ``llama3-8b`` are shape-only presets used for
FLOP and KV-byte arithmetic (e.g. by the simulator); nothing stops building
them, but their weights do not fit this machine comfortably.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from splitjax.config import ConfigError, DType, ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        name="tiny", vocab_size=32000, hidden_size=256, num_layers=4, num_heads=8,
        num_kv_heads=8, mlp_hidden=1024, max_seq_len=4096),
    "small": ModelConfig(
        name="small", vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
        num_kv_heads=4, mlp_hidden=2048, max_seq_len=4096),
    "llama2-7b": ModelConfig(
        name="llama2-7b", vocab_size=32000, hidden_size=4096, num_layers=32,
        num_heads=32, num_kv_heads=32, mlp_hidden=11008, max_seq_len=4096,
        dtype=DType.BFLOAT16),
    "llama2-70b": ModelConfig(
        name="llama2-70b", vocab_size=32000, hidden_size=8192, num_layers=80,
        num_heads=64, num_kv_heads=8, mlp_hidden=28672, max_seq_len=4096,
        dtype=DType.BFLOAT16),
    "llama3-8b": ModelConfig(
        name="llama3-8b", vocab_size=128256, hidden_size=4096, num_layers=32,
        num_heads=32, num_kv_heads=8, mlp_hidden=14336, max_seq_len=8192,
        rope_theta=500000.0, dtype=DType.BFLOAT16),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  """Returns preset ``name`` with ``overrides`` applied (validated)."""
  if name not in PRESETS:
    raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(sorted(PRESETS))})")
  base = PRESETS[name]
  derived = base.head_dim == base.hidden_size // base.num_heads
  if derived and "head_dim" not in overrides and ({"hidden_size", "num_heads"} & set(overrides)):
    overrides["head_dim"] = 0  # re-derive from the new hidden_size / num_heads
  return dataclasses.replace(base, **overrides)


def preset_config_dict(name: str, **overrides) -> ml_collections.ConfigDict:
  """The preset as a ConfigDict with every field, for use in ``configs/*.py``.

  Every field is present so that any of them can be overridden from the
  command line (``--config.model.num_layers=2``).
  """
  from splitjax.config import to_plain_dict
  return ml_collections.ConfigDict(to_plain_dict(get_preset(name, **overrides)))
