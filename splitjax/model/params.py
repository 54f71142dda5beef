"""Model parameters as an explicit pytree, split from the NNX module.

The engine compiles the embedding, each layer and the head as separate
functions (prefill runs as a chain of layer-group programs when KV is sent
layer by layer), so parameters are kept per part:

  Params(embed=State, layers=(State, ...), head=State)

and :class:`ModelDefs` holds the static graph definitions to merge them back.
All layers share one graph definition, so one compiled layer-group program
serves every group.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from splitjax.config import ModelConfig
from splitjax.model.llama import Block, Head, Llama


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Params:
  """Arrays of one model replica. A pytree; leaves are jax.Arrays."""
  embed: nnx.State
  layers: tuple[nnx.State, ...]
  head: nnx.State


@dataclasses.dataclass(frozen=True)
class ModelDefs:
  """Static graph definitions (hashable) to rebuild modules from Params."""
  cfg: ModelConfig
  embed: nnx.GraphDef
  block: nnx.GraphDef
  head: nnx.GraphDef

  def embed_mod(self, embed_state: nnx.State) -> nnx.Embed:
    return nnx.merge(self.embed, embed_state)

  def block_mod(self, layer_state: nnx.State) -> Block:
    return nnx.merge(self.block, layer_state)

  def logits(self, p: Params, x: jax.Array) -> jax.Array:
    """Final norm + LM head on x [..., D] -> float32 logits [..., V]."""
    head: Head = nnx.merge(self.head, p.head)
    table = self.embed_mod(p.embed).embedding[...] if self.cfg.tie_embeddings else None
    return head(x, table)


def split_model(model: Llama) -> tuple[ModelDefs, Params]:
  """Splits a module into static defs and a Params pytree (no copies)."""
  embed_def, embed_state = nnx.split(model.embed)
  block_def = nnx.split(model.layers[0])[0]
  layers = tuple(nnx.split(b)[1] for b in model.layers)
  head_def, head_state = nnx.split(model.head)
  return (ModelDefs(model.cfg, embed_def, block_def, head_def),
          Params(embed_state, layers, head_state))


def merge_model(defs: ModelDefs, params: Params) -> Llama:
  """Rebuilds a full :class:`Llama` module sharing the arrays of ``params``."""
  abstract = nnx.eval_shape(lambda: Llama(defs.cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  state["embed"] = params.embed
  state["head"] = params.head
  for i, layer in enumerate(params.layers):
    state["layers"][i] = layer
  return nnx.merge(graphdef, state)
