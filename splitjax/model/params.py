"""Model parameters as flat tuples of arrays, split from the NNX module.

The engine compiles the embedding, each layer and the head as separate
functions (prefill runs as a chain of layer-group programs when KV is sent
layer by layer), so parameters are kept per part:

  Params(embed=(arrays...), layers=((arrays...), ...), head=(arrays...))

Plain tuples, not ``nnx.State``: every jitted call flattens its arguments,
and flattening ~100 NNX variables in Python cost ~7 ms per decode step,
while tuples flatten in C++. :class:`ModelDefs` holds the static graph
definitions, tree structures and logical axis names to rebuild modules.
All layers share one definition, so one compiled layer-group program serves
every group.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from splitjax.config import ModelConfig
from splitjax.model.llama import Block, Head, Llama

Leaves = tuple[jax.Array, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Params:
  """Arrays of one model replica (a pytree)."""
  embed: Leaves
  layers: tuple[Leaves, ...]
  head: Leaves


@dataclasses.dataclass(frozen=True)
class _Part:
  graphdef: nnx.GraphDef
  treedef: jax.tree_util.PyTreeDef
  names: tuple  # logical axis names per leaf, e.g. ("vocab", "embed")

  def merge(self, leaves: Leaves):
    return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))


def _split_part(module) -> tuple[_Part, Leaves]:
  graphdef, state = nnx.split(module)
  is_var = lambda x: isinstance(x, nnx.Variable)
  variables = jax.tree.leaves(state, is_leaf=is_var)
  names = tuple(v.get_metadata().get("out_sharding") or (None,) * v.value.ndim
                for v in variables)
  leaves, treedef = jax.tree.flatten(state)
  return _Part(graphdef, treedef, names), tuple(leaves)


@dataclasses.dataclass(frozen=True)
class ModelDefs:
  """Static description (graph definitions, tree structures, axis names)."""
  cfg: ModelConfig
  embed: _Part
  block: _Part
  head: _Part

  def embed_mod(self, leaves: Leaves) -> nnx.Embed:
    return self.embed.merge(leaves)

  def block_mod(self, leaves: Leaves) -> Block:
    return self.block.merge(leaves)

  def logits(self, p: Params, x: jax.Array) -> jax.Array:
    """Final norm + LM head on x [..., D] -> float32 logits [..., V]."""
    head: Head = self.head.merge(p.head)
    table = self.embed_mod(p.embed).embedding[...] if self.cfg.tie_embeddings else None
    return head(x, table)

  def names(self) -> Params:
    """Logical axis names with the structure of Params."""
    return Params(self.embed.names, (self.block.names,) * self.cfg.num_layers,
                  self.head.names)


def split_model(model: Llama) -> tuple[ModelDefs, Params]:
  """Splits a module into static defs and a Params pytree (no copies)."""
  embed_part, embed = _split_part(model.embed)
  block_part, _ = _split_part(model.layers[0])
  layers = tuple(_split_part(b)[1] for b in model.layers)
  head_part, head = _split_part(model.head)
  return ModelDefs(model.cfg, embed_part, block_part, head_part), Params(embed, layers, head)
