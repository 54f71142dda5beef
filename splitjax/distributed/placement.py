"""Which process hosts each serving instance, and on which of its devices.

A serving cluster (``ServeConfig.cluster``) over a :class:`ProcessLayout`:
prompt instances go round robin over the prompt processes, token instances
over the token processes; the ``k``-th instance a process hosts takes its
devices ``[k * m, (k + 1) * m)`` (``m`` = ``instance_mesh.size``; the mesh's
``first_device`` is a single-process setting and is ignored). Instance names
and order are those of the single-process cluster (``prompt0, prompt1, ...,
token0, ...``), so every instance keeps its PRNG stream and the policy sees
the same cluster.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from splitjax.config import ConfigError, MeshConfig
from splitjax.distributed.layout import Pool, ProcessLayout
from splitjax.scheduling.records import Role
from splitjax.serve_config import ClusterPolicy, ServeConfig


@dataclasses.dataclass(frozen=True)
class InstancePlacement:
  """Instance ``name`` (index ``index`` in the cluster, home ``role``) runs on
  process ``process``, on that process's local devices ``devices``."""
  name: str
  index: int
  role: Role
  process: int
  devices: tuple[int, ...]


def place_instances(cfg: ServeConfig, layout: ProcessLayout,
                    devices_per_process: Sequence[int]) -> tuple[InstancePlacement, ...]:
  """Placement of every instance of ``cfg`` (see module doc).

  Raises ConfigError if the policy is not SPLIT (co-located instances have no
  pool to live in), or a process has too few devices for its instances.
  """
  if cfg.scheduler.policy != ClusterPolicy.SPLIT:
    raise ConfigError(f"a multi-process cluster needs scheduler.policy=split, got "
                      f"{cfg.scheduler.policy.value!r}")
  if len(devices_per_process) != layout.num_processes:
    raise ConfigError(f"{len(devices_per_process)} device counts for "
                      f"{layout.num_processes} processes")
  c = cfg.cluster
  size = c.instance_mesh.size
  hosted = [0] * layout.num_processes
  out = []
  pools = ((Role.PROMPT, c.prompt_instances, layout.prompt_processes),
           (Role.TOKEN, c.token_instances, layout.token_processes))
  for role, count, processes in pools:
    for i in range(count):
      p = processes[i % len(processes)]
      k = hosted[p]
      hosted[p] += 1
      out.append(InstancePlacement(f"{role.value}{i}", len(out), role, p,
                                   tuple(range(k * size, (k + 1) * size))))
  for p, n in enumerate(hosted):
    if n * size > devices_per_process[p]:
      raise ConfigError(
          f"process {p} ({layout.pools[p].value} pool) hosts {n} instances of {size} devices "
          f"but has {devices_per_process[p]} devices (set the launcher's --cpu_devices, or "
          f"fewer {layout.pools[p].value}_instances / a smaller instance_mesh)")
  for p, pool in enumerate(layout.pools):
    if hosted[p] == 0:
      raise ConfigError(f"process {p} ({pool.value} pool) hosts no instance: the cluster has "
                        f"{c.prompt_instances if pool == Pool.PROMPT else c.token_instances} "
                        f"{pool.value} instances for {len(_of(layout, pool))} {pool.value} "
                        "processes")
  return tuple(out)


def local_mesh_config(mesh: MeshConfig, placement: InstancePlacement) -> MeshConfig:
  """``mesh`` starting at the instance's first local device."""
  return dataclasses.replace(mesh, first_device=placement.devices[0])


def _of(layout: ProcessLayout, pool: Pool) -> tuple[int, ...]:
  return layout.prompt_processes if pool == Pool.PROMPT else layout.token_processes
