"""Save and restore model parameters with orbax-checkpoint.

A checkpoint is a directory holding ``model_config.json`` (our ModelConfig)
and an orbax ``params`` item with the model's state as a nested dict.
Restoring needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import orbax.checkpoint as ocp
from flax import nnx

from splitjax.config import ModelConfig, from_config_dict, to_plain_dict
from splitjax.model.hf_import import CheckpointError
from splitjax.model.llama import Llama

_CONFIG = "model_config.json"
_PARAMS = "params"


def save(model: Llama, path: str | Path) -> Path:
  """Writes ``model`` to directory ``path`` (created; must not hold a checkpoint)."""
  path = Path(path).absolute()
  path.mkdir(parents=True, exist_ok=True)
  if (path / _PARAMS).exists():
    raise CheckpointError(f"{path} already holds a checkpoint; choose a new directory")
  state = nnx.to_pure_dict(nnx.state(model))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path / _PARAMS, state)
  (path / _CONFIG).write_text(json.dumps(to_plain_dict(model.cfg), indent=2))
  return path


def restore(path: str | Path) -> Llama:
  """Reads a checkpoint written by :func:`save`."""
  path = Path(path).absolute()
  cfg_file = path / _CONFIG
  if not cfg_file.is_file() or not (path / _PARAMS).exists():
    raise CheckpointError(f"{path} is not a splitjax checkpoint "
                          f"(needs {_CONFIG} and {_PARAMS}/)")
  cfg = from_config_dict(ModelConfig, json.loads(cfg_file.read_text()))
  model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
  abstract = nnx.to_pure_dict(nnx.state(model))
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(path / _PARAMS, abstract)
  nnx.replace_by_pure_dict(graph_state := nnx.state(model), state)
  nnx.update(model, graph_state)
  return model
