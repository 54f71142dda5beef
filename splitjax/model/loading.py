"""Model weights for the scripts: random, a Hugging Face directory, or an orbax checkpoint."""

from __future__ import annotations

from pathlib import Path

from splitjax.config import ModelConfig
from splitjax.model import checkpoint as ckpt
from splitjax.model.hf_import import CheckpointError, load_hf_llama
from splitjax.model.llama import init_model
from splitjax.model.params import ModelDefs, Params, split_model


def load_model(checkpoint: str | None, model: ModelConfig,
               seed: int = 0) -> tuple[ModelDefs, Params, ModelConfig]:
  """(defs, params, config of the model actually loaded).

  ``checkpoint`` None -> random weights for ``model`` seeded by ``seed``; a
  directory with ``model_config.json`` -> splitjax orbax checkpoint; one with
  ``config.json`` -> Hugging Face Llama. Raises CheckpointError otherwise.
  """
  if checkpoint is None:
    llama = init_model(model, seed)
  elif (Path(checkpoint) / "model_config.json").is_file():
    llama = ckpt.restore(checkpoint)
  elif (Path(checkpoint) / "config.json").is_file() or not Path(checkpoint).is_dir():
    llama = load_hf_llama(checkpoint)
  else:
    raise CheckpointError(f"{checkpoint!r} has neither config.json (Hugging Face) nor "
                          "model_config.json (splitjax)")
  defs, params = split_model(llama)
  return defs, params, llama.cfg
