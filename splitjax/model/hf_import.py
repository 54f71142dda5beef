"""Import a Hugging Face Llama checkpoint directory (config.json + *.safetensors).

Weights keep Hugging Face's [out, in] orientation (see ``llama.Dense``) and
the rotate-half rotary convention, so import is a renaming, not a permutation.
Missing files, missing or mis-shaped tensors and unsupported architectures
raise :class:`CheckpointError` naming the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from splitjax.config import ConfigError, DType, ModelConfig
from splitjax.model.llama import Llama, jnp_dtype


class CheckpointError(ValueError):
  """A checkpoint directory is incomplete, inconsistent or unsupported."""


_DTYPES = {"float32": DType.FLOAT32, "bfloat16": DType.BFLOAT16, "float16": DType.BFLOAT16}


def model_config_from_hf(hf: dict, name: str = "hf", dtype: DType | None = None) -> ModelConfig:
  """Translates a Hugging Face LlamaConfig dict into a ModelConfig."""
  arch = hf.get("model_type")
  if arch != "llama":
    raise CheckpointError(f"unsupported model_type {arch!r}: only 'llama' checkpoints are supported")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise CheckpointError(f"unsupported: config.json sets {flag}=true")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise CheckpointError(f"unsupported hidden_act {act!r} (only 'silu')")
  rope = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or {}
  rope.update({k: v for k, v in scaling.items() if k not in rope})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "llama3"):
    raise CheckpointError(f"unsupported rope type {rope_type!r} (default and llama3 are supported)")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  extra = {}
  if rope_type == "llama3":
    extra = dict(rope_scaling_factor=float(rope["factor"]),
                 rope_low_freq_factor=float(rope["low_freq_factor"]),
                 rope_high_freq_factor=float(rope["high_freq_factor"]),
                 rope_original_max_len=int(rope["original_max_position_embeddings"]))
  if dtype is None:
    dtype = _DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), DType.FLOAT32)
  heads = hf["num_attention_heads"]
  try:
    return ModelConfig(
        name=name, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        mlp_hidden=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 4096),
        head_dim=hf.get("head_dim") or 0, rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype, **extra)
  except KeyError as e:
    raise CheckpointError(f"config.json is missing key {e.args[0]!r}") from e
  except ConfigError as e:
    raise CheckpointError(f"config.json: {e}") from e


def _expected(cfg: ModelConfig) -> dict[str, tuple[tuple, tuple[int, ...]]]:
  """HF tensor name -> (path in our module, shape)."""
  d, kv, q, f = cfg.hidden_size, cfg.kv_size, cfg.q_size, cfg.mlp_hidden
  out = {"model.embed_tokens.weight": (("embed", "embedding"), (cfg.vocab_size, d)),
         "model.norm.weight": (("head", "norm", "scale"), (d,))}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = (("head", "lm_head", "weight"), (cfg.vocab_size, d))
  for i in range(cfg.num_layers):
    p = f"model.layers.{i}."
    layer = ("layers", i)
    out.update({
        p + "self_attn.q_proj.weight": (layer + ("q_proj", "weight"), (q, d)),
        p + "self_attn.k_proj.weight": (layer + ("k_proj", "weight"), (kv, d)),
        p + "self_attn.v_proj.weight": (layer + ("v_proj", "weight"), (kv, d)),
        p + "self_attn.o_proj.weight": (layer + ("o_proj", "weight"), (d, q)),
        p + "mlp.gate_proj.weight": (layer + ("mlp", "gate_proj", "weight"), (f, d)),
        p + "mlp.up_proj.weight": (layer + ("mlp", "up_proj", "weight"), (f, d)),
        p + "mlp.down_proj.weight": (layer + ("mlp", "down_proj", "weight"), (d, f)),
        p + "input_layernorm.weight": (layer + ("input_norm", "scale"), (d,)),
        p + "post_attention_layernorm.weight": (layer + ("post_norm", "scale"), (d,)),
    })
  return out


def read_hf_config(path: str | os.PathLike) -> dict:
  """Reads ``config.json`` of a checkpoint directory."""
  path = Path(path)
  if not path.is_dir():
    raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
  cfg_file = path / "config.json"
  if not cfg_file.is_file():
    raise CheckpointError(f"checkpoint directory {str(path)!r} has no config.json")
  try:
    return json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_file}: invalid JSON ({e})") from e


def load_hf_llama(path: str | os.PathLike, dtype: DType | None = None) -> Llama:
  """Builds a :class:`Llama` from a Hugging Face checkpoint directory.

  Args:
    path: directory with ``config.json`` and one or more ``*.safetensors``.
    dtype: parameter dtype; default from the checkpoint's ``torch_dtype``.
  Raises:
    CheckpointError: naming the missing file, tensor or bad shape.
  """
  from safetensors import safe_open

  path = Path(path)
  cfg = model_config_from_hf(read_hf_config(path), name=path.name, dtype=dtype)
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"checkpoint directory {str(path)!r} has no *.safetensors files")
  expected = _expected(cfg)
  model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
  dt = jnp_dtype(cfg.dtype)
  found: set[str] = set()
  for file in files:
    with safe_open(str(file), framework="flax") as f:
      for name in f.keys():
        if name not in expected:
          if name.endswith("rotary_emb.inv_freq"):
            continue
          raise CheckpointError(f"{file.name}: unexpected tensor {name!r} for a Llama model")
        where, shape = expected[name]
        tensor = f.get_tensor(name)
        if tuple(tensor.shape) != shape:
          raise CheckpointError(f"{file.name}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                f"expected {shape} from config.json")
        _set(model, where, jnp.asarray(tensor, dt))
        found.add(name)
  missing = sorted(set(expected) - found)
  if missing:
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    raise CheckpointError(f"checkpoint {str(path)!r} is missing tensors: "
                          f"{', '.join(missing[:3])}{more}")
  return model


def _set(model: Llama, where: tuple, value) -> None:
  obj = model
  for part in where[:-1]:
    obj = obj[part] if isinstance(part, int) else getattr(obj, part)
  var = getattr(obj, where[-1])
  var.set_value(value)
