"""Where this process sits in a multi-process job, and joining the job.

Coordinates come, in this order, from explicit values (flags), from the
``SPLITJAX_*`` environment variables that ``scripts/launch_local.py`` sets
(:class:`EnvVar`), or from JAX's own cluster auto-detection (SLURM, Open MPI,
Kubernetes, TPU pods...) when ``detect_cluster`` is set. :func:`initialize`
then calls ``jax.distributed.initialize`` with the CPU settings that
cross-process ``jax.device_put`` needs:

- ``jax_cpu_collectives_implementation``: none by default (:class:`CpuCollectives`).
  splitjax never runs a collective across processes (meshes are process-local;
  KV moves with ``device_put``, decisions through the key-value store), and
  with gloo set, XLA routes even a process's own tp all-reduces through gloo's
  TCP transport: a tp=2 ``tiny`` decode step took 88 ms vs 39 ms without it
  (2 processes, busy machine). ``gloo`` stays available for meshes that span
  processes;
- ``jax_cross_host_transfer_socket_address``: the address this process's
  transfer server listens on and advertises, distinct per process on one host
  and reachable from the others (default: this host's address towards the
  coordinator, a free port);
- ``jax_enable_recoverability``: the coordination service does not abort
  every process when one dies, so the survivors can report what was lost
  (``splitjax.distributed.control`` notices the death through heartbeats).

Must run before anything touches a JAX backend (``jax.devices()``, arrays).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
import sys
from typing import Mapping


class EnvVar(str, enum.Enum):
  """Environment variables read by :meth:`DistributedSpec.from_env`."""
  COORDINATOR = "SPLITJAX_COORDINATOR_ADDRESS"   # host:port of process 0's service
  NUM_PROCESSES = "SPLITJAX_NUM_PROCESSES"
  PROCESS_ID = "SPLITJAX_PROCESS_ID"
  TRANSFER_ADDRESS = "SPLITJAX_TRANSFER_ADDRESS"  # host:port of this process's transfer server
  CPU_DEVICES = "SPLITJAX_CPU_DEVICES"            # virtual CPU devices of this process
  HEARTBEAT_TIMEOUT_S = "SPLITJAX_HEARTBEAT_TIMEOUT_S"
  CPU_COLLECTIVES = "SPLITJAX_CPU_COLLECTIVES"    # none | gloo


class CpuCollectives(str, enum.Enum):
  """Collectives across processes on CPU (see module doc)."""
  NONE = "none"    # process-local collectives only (what splitjax runs)
  GLOO = "gloo"    # meshes spanning processes; slower local collectives (TCP)


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """How to join a job. ``None`` fields are filled by JAX's cluster detection
  (only when ``detect_cluster``); ``heartbeat_timeout_s`` bounds how long a dead
  or stopped peer goes unnoticed (JAX's service and splitjax's heartbeats)."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  transfer_address: str | None = None
  cpu_devices: int | None = None
  heartbeat_timeout_s: int = 10
  init_timeout_s: int = 60
  detect_cluster: bool = False
  cpu_collectives: CpuCollectives = CpuCollectives.NONE

  def __post_init__(self):
    try:
      object.__setattr__(self, "cpu_collectives", CpuCollectives(self.cpu_collectives))
    except ValueError:
      raise ValueError(f"cpu_collectives {self.cpu_collectives!r} is not one of "
                       f"{[c.value for c in CpuCollectives]}") from None

  @property
  def multi_process(self) -> bool:
    """Whether this spec asks for a multi-process job at all."""
    return self.detect_cluster or (self.num_processes or 1) > 1

  @classmethod
  def from_env(cls, environ: Mapping[str, str] | None = None, **explicit) -> "DistributedSpec":
    """Spec from ``explicit`` values (non-None win) over :class:`EnvVar` variables.

    Raises ValueError naming a variable that is not an integer where one is needed.
    """
    env = os.environ if environ is None else environ
    def num(var: EnvVar):
      text = env.get(var.value)
      if text in (None, ""):
        return None
      try:
        return int(text)
      except ValueError:
        raise ValueError(f"{var.value}={text!r} is not an integer") from None
    from_env = dict(coordinator_address=env.get(EnvVar.COORDINATOR.value) or None,
                    num_processes=num(EnvVar.NUM_PROCESSES),
                    process_id=num(EnvVar.PROCESS_ID),
                    transfer_address=env.get(EnvVar.TRANSFER_ADDRESS.value) or None,
                    cpu_devices=num(EnvVar.CPU_DEVICES),
                    heartbeat_timeout_s=num(EnvVar.HEARTBEAT_TIMEOUT_S),
                    cpu_collectives=env.get(EnvVar.CPU_COLLECTIVES.value) or None)
    merged = {k: v for k, v in from_env.items() if v is not None}
    merged.update({k: v for k, v in explicit.items() if v is not None})
    return cls(**merged)

  def env(self) -> dict[str, str]:
    """The :class:`EnvVar` variables that reproduce this spec in a child process."""
    pairs = {EnvVar.COORDINATOR: self.coordinator_address,
             EnvVar.NUM_PROCESSES: self.num_processes, EnvVar.PROCESS_ID: self.process_id,
             EnvVar.TRANSFER_ADDRESS: self.transfer_address,
             EnvVar.CPU_DEVICES: self.cpu_devices,
             EnvVar.HEARTBEAT_TIMEOUT_S: self.heartbeat_timeout_s,
             EnvVar.CPU_COLLECTIVES: self.cpu_collectives.value}
    return {k.value: str(v) for k, v in pairs.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  """This process's place in the job once joined."""
  process_id: int
  num_processes: int
  transfer_address: str


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port free on ``host`` right now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def local_ip_towards(host: str) -> str:
  """This machine's address on the route to ``host`` (no packet is sent)."""
  if host in ("localhost", "127.0.0.1", "::1", ""):
    return "127.0.0.1"
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    try:
      s.connect((host, 9))
      return s.getsockname()[0]
    except OSError:
      return "127.0.0.1"


def initialize(spec: DistributedSpec) -> ProcessInfo:
  """Joins the job described by ``spec`` (see module doc); returns where we are.

  Raises ValueError (from JAX) if the coordinates are incomplete and cluster
  detection is off or finds nothing.
  """
  import jax
  from jax._src import distributed as jax_distributed
  if spec.cpu_devices:
    jax.config.update("jax_num_cpu_devices", spec.cpu_devices)
  jax.config.update("jax_cpu_collectives_implementation",
                    None if spec.cpu_collectives == CpuCollectives.NONE else "gloo")
  jax.config.update("jax_enable_recoverability", True)
  jax.distributed.initialize(
      spec.coordinator_address, spec.num_processes, spec.process_id,
      cluster_detection_method=None if spec.detect_cluster else "deactivate",
      initialization_timeout=spec.init_timeout_s,
      heartbeat_timeout_seconds=spec.heartbeat_timeout_s)
  state = jax_distributed.global_state
  address = spec.transfer_address
  if not address:
    host = local_ip_towards(state.coordinator_address.rsplit(":", 1)[0].strip("[]"))
    address = f"{host}:{free_port(host)}"
  jax.config.update("jax_cross_host_transfer_socket_address", address)
  return ProcessInfo(state.process_id, state.num_processes, address)


def process_devices(process_index: int) -> list:
  """The devices of process ``process_index``, in id order (any process may ask)."""
  import jax
  return sorted((d for d in jax.devices() if d.process_index == process_index),
                key=lambda d: d.id)


def exit_now(code: int) -> None:
  """Flushes output and ends the process without JAX's shutdown (which would
  wait on peers that may be dead). For failure paths only."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def define_flags():
  """absl flags for :func:`spec_from_flags` (call once, at import of a script)."""
  from absl import flags
  return dict(
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, f"host:port of process 0 (or ${EnvVar.COORDINATOR.value})."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, f"Processes in the job (or ${EnvVar.NUM_PROCESSES.value})."),
      process_id=flags.DEFINE_integer(
          "process_id", None, f"This process's id (or ${EnvVar.PROCESS_ID.value})."),
      transfer_address=flags.DEFINE_string(
          "transfer_address", None, "host:port of this process's KV transfer server, "
          f"reachable by the others (or ${EnvVar.TRANSFER_ADDRESS.value}; default: a free port)."),
      heartbeat_timeout_s=flags.DEFINE_integer(
          "heartbeat_timeout_s", None, "Seconds after which a silent process counts as "
          f"dead (or ${EnvVar.HEARTBEAT_TIMEOUT_S.value}; default 10)."),
      cpu_collectives=flags.DEFINE_enum(
          "cpu_collectives", None, [c.value for c in CpuCollectives],
          f"CPU collectives across processes (or ${EnvVar.CPU_COLLECTIVES.value}; default "
          "none: splitjax's meshes are process-local)."),
      detect_cluster=flags.DEFINE_bool(
          "detect_cluster", False, "Let JAX detect the job (SLURM, Open MPI, Kubernetes...) "
          "when the coordinates above are unset."))


def spec_from_flags(defined: dict) -> DistributedSpec:
  """DistributedSpec from the flags of :func:`define_flags` over the environment."""
  return DistributedSpec.from_env(**{k: f.value for k, f in defined.items()})
