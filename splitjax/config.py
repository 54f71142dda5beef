"""Typed, frozen configuration: the only place that reads ml_collections configs.

Config files in ``configs/`` define ``get_config() -> ml_collections.ConfigDict``.
Scripts load them with absl ``config_flags`` and call :func:`from_config_dict`
exactly once; everything below that sees only the frozen dataclasses here.

Conversion is strict: an unknown key, a missing required key or a value of the
wrong type raises :class:`ConfigError` naming the full dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
  """A configuration value is unknown, missing, ill-typed or inconsistent."""


class DType(enum.Enum):
  """Parameter / activation dtype of the model."""
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"


class TransferMode(enum.Enum):
  """How a prompt's KV cache reaches the decode mesh.

  SERIALIZED: after the whole prefill finished, one copy.
  LAYERWISE: prefill runs as a chain of layer-group programs; each group's KV
    is copied as soon as that group is dispatched, overlapping later groups.
  AUTO: LAYERWISE for prompts of at least ``EngineConfig.layerwise_min_tokens``
    tokens, SERIALIZED below (as in the Splitwise paper).
  """
  SERIALIZED = "serialized"
  LAYERWISE = "layerwise"
  AUTO = "auto"


class GenerateMode(enum.Enum):
  """SPLIT: prefill on the prefill mesh, decode on the decode mesh.
  SINGLE: both phases on the prefill mesh, no transfer."""
  SPLIT = "split"
  SINGLE = "single"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape of a Llama-family decoder. Sizes are counts, not bytes."""
  name: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_hidden: int
  max_seq_len: int
  head_dim: int = 0            # 0 -> hidden_size // num_heads
  rope_theta: float = 10000.0
  # Llama-3 style rope scaling; factor 0 disables it.
  rope_scaling_factor: float = 0.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = False
  dtype: DType = DType.FLOAT32

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "num_kv_heads", "mlp_hidden", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"model.num_heads ({self.num_heads}) must be a multiple of "
          f"model.num_kv_heads ({self.num_kv_heads})")
    if self.head_dim == 0:
      if self.hidden_size % self.num_heads:
        raise ConfigError("model.hidden_size must be divisible by model.num_heads "
                          "when model.head_dim is 0")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.head_dim % 2:
      raise ConfigError(f"model.head_dim must be even for rotary embeddings, got {self.head_dim}")

  @property
  def q_size(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def kv_size(self) -> int:
    return self.num_kv_heads * self.head_dim

  @property
  def bytes_per_param(self) -> int:
    return 4 if self.dtype == DType.FLOAT32 else 2

  def param_count(self) -> int:
    """Number of parameters (embedding and untied head counted separately)."""
    d = self.hidden_size
    attn = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
    mlp = 3 * d * self.mlp_hidden
    per_layer = attn + mlp + 2 * d
    embed = self.vocab_size * d
    head = 0 if self.tie_embeddings else self.vocab_size * d
    return self.num_layers * per_layer + embed + head + d

  def kv_bytes_per_token(self) -> int:
    """Bytes of K and V cache per token over all layers (GQA-aware)."""
    return 2 * self.num_layers * self.kv_size * self.bytes_per_param

  def prefill_flops(self, prompt_len: int) -> float:
    """Matmul FLOPs of a causal prefill of ``prompt_len`` tokens that computes
    logits for the last position only (what the engine does)."""
    t = prompt_len
    d = self.hidden_size
    proj = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
    mlp = 3 * d * self.mlp_hidden
    attn = 2 * self.q_size * t * (t + 1) / 2   # position i attends to i + 1 keys
    return 2.0 * (self.num_layers * (t * (proj + mlp) + attn) + d * self.vocab_size)

  def flops_per_token(self, context: int) -> float:
    """Forward FLOPs for one token attending to ``context`` earlier tokens.

    Counts matmuls only (2 FLOPs per multiply-add): projections, MLP, the
    attention score and value products over ``context`` keys, and the LM head.
    """
    d = self.hidden_size
    proj = d * self.q_size + 2 * d * self.kv_size + self.q_size * d
    mlp = 3 * d * self.mlp_hidden
    attn = 2 * self.q_size * context
    return 2.0 * (self.num_layers * (proj + mlp + attn) + d * self.vocab_size)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh of one model replica: ``dp`` x ``tp`` devices.

  ``first_device`` is the index in ``jax.devices()`` where this mesh starts;
  the mesh takes the next ``dp * tp`` devices.
  """
  dp: int = 1
  tp: int = 1
  first_device: int = 0

  def __post_init__(self):
    if self.dp <= 0 or self.tp <= 0 or self.first_device < 0:
      raise ConfigError(f"mesh sizes must be positive and first_device >= 0, got {self}")

  @property
  def size(self) -> int:
    return self.dp * self.tp


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Static shapes of the compiled prefill / insert / decode programs."""
  # Prompt lengths are right-padded up to the smallest bucket that fits.
  prefill_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
  # Query/key tile of the causal prefill attention (online softmax over tiles;
  # fully masked tiles are skipped). 256 was fastest on CPU for T=2048.
  attention_chunk: int = 256
  # Number of decode slots (the decode batch) on a decode engine.
  decode_slots: int = 8
  # Positions per slot in the decode cache; 0 -> model.max_seq_len.
  max_cache_len: int = 0
  # Layers per prefill program in layer-wise mode; 0 -> ceil(num_layers / 4).
  layer_group_size: int = 0
  # AUTO transfer switches to layer-wise at this prompt length (tokens).
  layerwise_min_tokens: int = 512

  def __post_init__(self):
    b = self.prefill_buckets
    if not b or any(x <= 0 for x in b) or list(b) != sorted(set(b)):
      raise ConfigError(f"engine.prefill_buckets must be increasing positive ints, got {b}")
    if self.decode_slots <= 0:
      raise ConfigError("engine.decode_slots must be positive")
    if self.attention_chunk <= 0:
      raise ConfigError("engine.attention_chunk must be positive")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 means greedy; top_k 0 means no top-k cut; top_p 1 means none."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ConfigError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """Everything ``scripts/generate.py`` needs besides the prompts."""
  model: ModelConfig
  prefill_mesh: MeshConfig = MeshConfig()
  decode_mesh: MeshConfig = MeshConfig(first_device=4)
  engine: EngineConfig = EngineConfig()
  sampling: SamplingConfig = SamplingConfig()
  mode: GenerateMode = GenerateMode.SPLIT
  transfer: TransferMode = TransferMode.AUTO
  max_new_tokens: int = 16
  seed: int = 0  # PRNG seed of random weights when no checkpoint is given
  # Padded prompt tokens per prefill program; a wave is prefilled in several
  # programs when it has more (a longer prompt runs alone). Prompt throughput
  # saturates near 2048 batched tokens (measured here: 4 x 512 -> 1558 tok/s,
  # 32 x 512 in one program -> 1317 tok/s on `small`).
  prefill_token_budget: int = 2048

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.prefill_token_budget <= 0:
      raise ConfigError(f"prefill_token_budget must be positive, got {self.prefill_token_budget}")


# --------------------------------------------------------------------------
# Strict conversion from ml_collections / dict to dataclasses.

def from_config_dict(cls: type, cfg: Any, path: str = "") -> Any:
  """Builds dataclass ``cls`` from a ConfigDict or mapping, strictly.

  Raises:
    ConfigError: naming the dotted key of any unknown, missing or ill-typed value.
  """
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ConfigError(f"config key '{path or '<root>'}': expected a section, got {cfg!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  for key in cfg:
    if key not in fields:
      close = difflib.get_close_matches(key, list(fields), n=1)
      hint = f"; did you mean '{_join(path, close[0])}'?" if close else ""
      raise ConfigError(f"unknown config key '{_join(path, key)}'{hint} "
                        f"(known: {', '.join(sorted(fields))})")
  kwargs = {}
  for name, field in fields.items():
    key = _join(path, name)
    if name not in cfg:
      if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        raise ConfigError(f"missing required config key '{key}'")
      continue
    kwargs[name] = _convert(hints[name], cfg[name], key)
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config section '{path or '<root>'}': {e}") from e


def _join(path: str, key: str) -> str:
  return f"{path}.{key}" if path else key


def _convert(tp: Any, value: Any, key: str) -> Any:
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    return from_config_dict(tp, value, key)
  if isinstance(tp, type) and issubclass(tp, enum.Enum):
    if isinstance(value, tp):
      return value
    names = {m.value: m for m in tp} | {m.name.lower(): m for m in tp}
    if isinstance(value, str) and value.lower() in names:
      return names[value.lower()]
    raise ConfigError(f"config key '{key}': expected one of "
                      f"{sorted(m.value for m in tp)}, got {value!r}")
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
      return None
    return _convert(args[0], value, key)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"config key '{key}': expected a sequence, got {value!r}")
    (elem, *_rest) = typing.get_args(tp)
    return tuple(_convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
  if tp is bool:
    if isinstance(value, bool):
      return value
  elif tp is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif tp is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif tp is str:
    if isinstance(value, str):
      return value
  else:
    return value
  raise ConfigError(f"config key '{key}': expected {tp.__name__}, "
                    f"got {type(value).__name__} {value!r}")


def to_plain_dict(obj: Any) -> Any:
  """Inverse of :func:`from_config_dict` for dataclass trees (enums -> values)."""
  if dataclasses.is_dataclass(obj):
    return {f.name: to_plain_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, enum.Enum):
    return obj.value
  if isinstance(obj, tuple):
    return [to_plain_dict(v) for v in obj]
  return obj
