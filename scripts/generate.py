"""Prefill on one device mesh, move the KV cache, decode on another.

  python scripts/generate.py --config configs/generate_tiny.py \
      --prompt_ids 1,2,3,4 --prompt_ids 9,8,7 --max_new_tokens 16 \
      --mode split --transfer layerwise --output_json out.json

``--checkpoint DIR`` loads a Hugging Face Llama directory (config.json +
*.safetensors) or a splitjax orbax checkpoint; without it the config's model
preset gets random weights (seeded by --config.seed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from splitjax import cli  # noqa: E402

_CONFIG = cli.define_config(cli.repo_path("configs", "generate_tiny.py"), "Generation config file.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF Llama dir or splitjax checkpoint dir.")
_PROMPTS = flags.DEFINE_multi_string("prompt_ids", ["1,2,3,4,5,6,7,8"],
                                     "Comma-separated token ids; repeat for a batch.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Overrides config.max_new_tokens.")
_MODE = flags.DEFINE_enum("mode", None, ["split", "single"], "Overrides config.mode.")
_TRANSFER = flags.DEFINE_enum("transfer", None, ["serialized", "layerwise", "auto"],
                              "Overrides config.transfer.")
_OUTPUT = flags.DEFINE_string("output_json", None, "Write {'tokens': [[...], ...]} here.")
_DEVICES = flags.DEFINE_integer("num_cpu_devices", 8, "Virtual CPU devices (CPU only).")
_WARMUP = flags.DEFINE_bool("warmup", True, "Run once first so printed timings exclude "
                            "compilation.")


def load_model(checkpoint: str | None, cfg):
  """(ModelDefs, Params, GenerateConfig with the model actually loaded)."""
  from splitjax.model.loading import load_model as load
  defs, params, model = load(checkpoint, cfg.model, cfg.seed)
  return defs, params, dataclasses.replace(cfg, model=model)


def main(argv):
  del argv
  cli.use_cpu_devices(_DEVICES.value)
  from splitjax.config import ConfigError, GenerateConfig, from_config_dict
  from splitjax.engine.engine import PromptError
  from splitjax.engine.generate import Generator
  from splitjax.model.hf_import import CheckpointError

  try:
    cfg = from_config_dict(GenerateConfig, _CONFIG.value)
    overrides = {"max_new_tokens": _MAX_NEW.value, "mode": _MODE.value, "transfer": _TRANSFER.value}
    cfg = from_config_dict(GenerateConfig, {**_CONFIG.value.to_dict(),
                                            **{k: v for k, v in overrides.items() if v is not None}})
    prompts = [cli.parse_ids(p) for p in _PROMPTS.value]
    defs, params, cfg = load_model(_CHECKPOINT.value, cfg)
    gen = Generator(cfg, defs, params)
    if _WARMUP.value:
      gen.generate(prompts)
    result = gen.generate(prompts)
  except (ConfigError, PromptError, CheckpointError, ValueError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    return 2
  devices = lambda e: [d.id for d in e.mesh.devices.flat]
  pe, de = gen.prefill_engine, gen.decode_engine
  print(f"model {cfg.model.name}: {cfg.model.num_layers} layers, {cfg.model.param_count() / 1e6:.1f}M "
        f"params, {cfg.model.dtype.value}")
  print(f"prefill mesh: devices {devices(pe)} {dict(pe.mesh.shape)}")
  if cfg.mode.value == "split":
    how = {"serialized": "serialized after prefill",
           "layerwise": f"layer-wise, {pe.group_size} layer(s) per prefill program",
           "auto": f"layer-wise ({pe.group_size} layer(s) per program) from "
                   f"{cfg.engine.layerwise_min_tokens} tokens, serialized below"}[cfg.transfer.value]
    print(f"decode mesh:  devices {devices(de)} {dict(de.mesh.shape)}; KV transfer: {how}")
  else:
    print("decode on the same mesh (single mode, no transfer)")
  for p, toks in zip(prompts, result.tokens):
    print(f"prompt[{len(p)}] -> {toks}")
  print(f"prefill+transfer {result.prefill_s * 1e3:.1f} ms, decode {result.decode_s * 1e3:.1f} ms "
        f"({len(prompts) * (len(result.tokens[0]) - 1) / max(result.decode_s, 1e-9):.1f} tok/s), "
        f"KV {result.kv_bytes / 2**20:.2f} MiB")
  if _OUTPUT.value:
    Path(_OUTPUT.value).write_text(json.dumps({"tokens": result.tokens}))
    print(f"wrote {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
