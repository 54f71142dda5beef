"""Device meshes for model replicas and the sharding rules that map onto them.

A replica's mesh has axes ``('dp', 'tp')``. Parameters carry logical axis
names (see ``splitjax.model.llama``); :data:`LOGICAL_RULES` maps them to mesh
axes: attention heads, KV heads, MLP hidden and vocabulary are split over
``tp`` (tensor parallelism), batch over ``dp``. The KV cache has one
canonical layout on every mesh, ``[L, B, K, S, H]`` with KV heads over
``tp`` (:func:`kv_spec`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from splitjax.config import ConfigError, MeshConfig, ModelConfig

AXES = ("dp", "tp")
LOGICAL_RULES: dict[str, str | None] = {
    "batch": "dp",
    "embed": None,
    "heads": "tp",
    "kv_heads": "tp",
    "mlp": "tp",
    "vocab": "tp",
}


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh of ``cfg.dp x cfg.tp`` devices starting at ``cfg.first_device``."""
  devices = list(jax.devices() if devices is None else devices)
  end = cfg.first_device + cfg.size
  if end > len(devices):
    raise ConfigError(
        f"mesh needs devices [{cfg.first_device}, {end}) but only {len(devices)} exist "
        f"(set jax_num_cpu_devices or shrink the mesh)")
  grid = np.array(devices[cfg.first_device:end], dtype=object).reshape(cfg.dp, cfg.tp)
  return Mesh(grid, AXES)


def check_disjoint(*meshes: Mesh) -> None:
  """Raises ConfigError if two meshes share a device."""
  seen: dict[int, int] = {}
  for i, m in enumerate(meshes):
    for d in m.devices.flat:
      if d.id in seen:
        raise ConfigError(f"device {d.id} is in mesh {seen[d.id]} and mesh {i}; "
                          "prefill and decode meshes must be disjoint")
      seen[d.id] = i


def check_model_fits(model: ModelConfig, mesh: Mesh) -> None:
  """Tensor parallelism splits whole KV heads: num_kv_heads % tp == 0."""
  tp = mesh.shape["tp"]
  if model.num_kv_heads % tp or model.num_heads % tp:
    raise ConfigError(f"tp={tp} must divide num_heads ({model.num_heads}) and "
                      f"num_kv_heads ({model.num_kv_heads})")


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec for a parameter; a dim not divisible by its axis stays replicated."""
  axes = []
  for name, size in zip(names, shape):
    axis = LOGICAL_RULES.get(name) if name else None
    axes.append(axis if axis and size % mesh.shape[axis] == 0 else None)
  return P(*axes)


def _is_names(x) -> bool:
  return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def param_shardings(defs, params, mesh: Mesh):
  """NamedShardings with the structure of ``params`` (a model.params.Params).

  Each leaf's logical axis names (from ``defs.names()``) are mapped through
  :data:`LOGICAL_RULES`; ``params`` may be arrays or ShapeDtypeStructs.
  """
  return jax.tree.map(lambda n, a: NamedSharding(mesh, logical_spec(n, a.shape, mesh)),
                      defs.names(), params, is_leaf=_is_names)


def kv_spec() -> P:
  """Canonical KV layout ``[L, B, K, S, H]``: KV heads over ``tp``."""
  return P(None, None, "tp", None, None)


def cache_spec() -> P:
  """One layer of the decode cache (``[slots, K, H, S]`` keys, ``[slots, K, S, H]``
  values): slots over ``dp``, KV heads over ``tp``."""
  return P("dp", "tp", None, None)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis over ``dp``, the rest replicated."""
  return NamedSharding(mesh, P("dp", *([None] * (ndim - 1))))
