"""Typed configuration of a simulated cluster (``scripts/simulate.py``; no jax)."""

from __future__ import annotations

import dataclasses
import enum
import math

from splitjax.config import ConfigError, ModelConfig, TransferMode
from splitjax.serve_config import ClusterPolicy, SchedulerConfig, WorkloadConfig


class PerfModelKind(enum.Enum):
  PROFILE = "profile"     # the paper's measured profiles (or one written by scripts/profile.py)
  ROOFLINE = "roofline"   # FLOPs and bytes of the model on the machine kind


class DecodeModel(enum.Enum):
  """How a profile prices a decode step."""
  CONTEXT = "context"        # a + b x batch + c x sum(context): ours
  BATCH_ONLY = "batch_only"  # the profile's token time by batch size alone (the paper's simulator)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
  """``machines`` identical machines of catalog kind ``hardware``; one model
  instance per machine, tensor parallel over all its devices."""
  machines: int = 0
  hardware: str = "dgx-h100"


@dataclasses.dataclass(frozen=True)
class SimClusterConfig:
  """Machine pools. SPLIT uses ``prompt`` and ``token``; the co-located
  policies use ``colocated``."""
  prompt: PoolConfig = PoolConfig(25)
  token: PoolConfig = PoolConfig(15)
  colocated: PoolConfig = PoolConfig(40)
  perf_model: PerfModelKind = PerfModelKind.PROFILE
  decode_model: DecodeModel = DecodeModel.CONTEXT     # profile perf models only
  profile_path: str = ""           # "" -> ../shared/data/splitwise-profiles/perf_model.csv
  transfer: TransferMode = TransferMode.AUTO
  layerwise_min_tokens: int = 512
  # Fraction of the memory left after the weights that holds KV.
  kv_memory_fraction: float = 0.9
  # KV tokens per instance; 0 -> derived from the machine's memory as above
  # (set it to mirror an engine whose cache is sized explicitly, e.g. on CPU).
  kv_capacity_tokens: int = 0
  # Most requests decoding at once on an instance (its decode batch cap).
  max_batch: int = 512

  def __post_init__(self):
    if not 0.0 < self.kv_memory_fraction <= 1.0:
      raise ConfigError("cluster.kv_memory_fraction must be in (0, 1]")
    if self.kv_capacity_tokens < 0:
      raise ConfigError("cluster.kv_capacity_tokens must be >= 0 (0: from memory)")
    if self.max_batch <= 0 or self.layerwise_min_tokens <= 0:
      raise ConfigError("cluster.max_batch and cluster.layerwise_min_tokens must be positive")
    if (self.decode_model == DecodeModel.BATCH_ONLY
        and self.perf_model != PerfModelKind.PROFILE):
      raise ConfigError("cluster.decode_model=batch_only prices decode from a profile's "
                        "token times: it needs cluster.perf_model=profile")
    for name in ("prompt", "token", "colocated"):
      if getattr(self, name).machines < 0:
        raise ConfigError(f"cluster.{name}.machines must be >= 0")


@dataclasses.dataclass(frozen=True)
class SLOConfig:
  """The paper's latency SLOs: slowdown limits (measured latency / the same request's
  latency alone on an unloaded ``reference_hardware`` machine, dimensionless) at the
  p50 / p90 / p99 of completed requests. All nine must hold."""
  reference_hardware: str = "dgx-a100"    # catalog machine kind (hardware_catalog.json)
  ttft: tuple[float, ...] = (2.0, 3.0, 6.0)
  tbt: tuple[float, ...] = (1.25, 1.5, 5.0)
  e2e: tuple[float, ...] = (1.25, 1.5, 5.0)

  def __post_init__(self):
    if not self.reference_hardware:
      raise ConfigError("slo.reference_hardware must name a catalog machine kind")
    for name in ("ttft", "tbt", "e2e"):
      limits = getattr(self, name)
      if len(limits) != 3 or not all(0.0 < x < math.inf for x in limits):
        raise ConfigError(f"slo.{name} must be three positive finite slowdown limits "
                          f"(p50, p90, p99), got {limits!r}")


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """Everything ``scripts/simulate.py`` needs."""
  model: ModelConfig
  cluster: SimClusterConfig = SimClusterConfig()
  scheduler: SchedulerConfig = SchedulerConfig()
  workload: WorkloadConfig = WorkloadConfig()
  slo: SLOConfig = SLOConfig()
  leap: bool = True                # False: step every decode iteration (reference mode)
  sample_every_s: float = 1.0      # pool-occupancy timeline resolution
  # Assert after every event that no instance holds more KV than it has
  # (costs ~a second per 100k events; tests and audits).
  check_memory: bool = False

  def __post_init__(self):
    c = self.cluster
    if self.scheduler.policy == ClusterPolicy.SPLIT:
      if c.prompt.machines <= 0 or c.token.machines <= 0:
        raise ConfigError(f"the split policy needs prompt and token machines, got "
                          f"cluster.prompt.machines={c.prompt.machines} and "
                          f"cluster.token.machines={c.token.machines}")
    elif c.colocated.machines <= 0:
      raise ConfigError(f"policy {self.scheduler.policy.value} needs "
                        f"cluster.colocated.machines > 0")
    if self.sample_every_s <= 0:
      raise ConfigError("sample_every_s must be positive")


def design_config_dict(*, prompt: PoolConfig | None = None, token: PoolConfig | None = None,
                       colocated: PoolConfig | None = None, model: str = "llama2-70b"):
  """The ml_collections ConfigDict of one of the paper's cluster designs
  (``configs/sim/*.py``): ``model`` on the whole one-hour Azure conversation trace
  (``../shared/data``), profile perf models, the paper's SLOs against DGX-A100.

  ``prompt`` + ``token``: a Splitwise design (split policy, mixed pool on);
  ``colocated``: a baseline (every machine runs both phases, prefill first).
  The pools a design does not use get 0 machines.
  """
  import ml_collections

  from splitjax.config_defaults import section
  from splitjax.model.presets import preset_config_dict
  split = colocated is None
  if {split} != {prompt is not None, token is not None}:
    raise ValueError("give prompt and token pools (split) or a colocated pool (baseline)")
  hw = (prompt if split else colocated).hardware
  unused = PoolConfig(0, hw)
  c = ml_collections.ConfigDict()
  c.model = preset_config_dict(model)
  c.cluster = section(SimClusterConfig(prompt=prompt or unused, token=token or unused,
                                       colocated=colocated or unused))
  c.scheduler = section(SchedulerConfig(
      policy=ClusterPolicy.SPLIT if split else ClusterPolicy.COLOCATED, mixed_pool=split))
  c.workload = section(WorkloadConfig(trace="conv", duration_s=0.0))
  c.slo = section(SLOConfig())
  c.leap = True                 # False: step every decode iteration (reference mode)
  c.sample_every_s = 1.0        # pool-occupancy timeline resolution, seconds
  c.check_memory = False        # True: assert KV <= capacity on every instance after every event
  return c
