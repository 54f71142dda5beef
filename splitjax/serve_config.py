"""Typed configuration of a serving cluster (``scripts/serve.py``, ``runtime.Cluster``).

Plain frozen dataclasses (no jax), built from ml_collections files in
``configs/`` with :func:`splitjax.config.from_config_dict`; the scheduling
policies read :class:`SchedulerConfig`, the runtime the rest.
"""

from __future__ import annotations

import dataclasses
import enum

from splitjax.config import (ConfigError, EngineConfig, MeshConfig, ModelConfig,
                             TransferMode)


class ClusterPolicy(enum.Enum):
  """How the cluster's instances share the two phases.

  SPLIT: a prompt pool and a token pool (Splitwise); KV moves between them.
  COLOCATED: every instance runs both phases, whole-prompt prefill prioritized
    over decode between iterations (vLLM / Orca iteration-level batching).
  COLOCATED_CHUNKED: every instance runs both phases; each iteration carries all
    decodes plus prompt chunks up to a token budget (Sarathi-Serve).
  """
  SPLIT = "split"
  COLOCATED = "colocated"
  COLOCATED_CHUNKED = "colocated_chunked"


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """Knobs of the scheduling policies (token counts are tokens, not bytes)."""
  policy: ClusterPolicy = ClusterPolicy.SPLIT
  # Prompt tokens per prefill batch (FCFS); a longer prompt runs alone.
  prompt_token_budget: int = 2048
  max_prefill_batch: int = 16
  # COLOCATED_CHUNKED: tokens per iteration (decodes count one each).
  chunk_token_budget: int = 512
  # SPLIT: borrow instances into a mixed pool under pressure.
  mixed_pool: bool = False
  # Mean pending prompt tokens per prompt instance above which a token
  # instance is borrowed.
  borrow_prompt_tokens: int = 4096
  # Token pool KV (in use + reserved) / capacity above which a prompt
  # instance is borrowed.
  borrow_kv_fraction: float = 0.9
  # How many prompt batches in a row may delay a request's next token on a
  # mixed instance before its token batch gets priority.
  max_preemptions: int = 4
  # KV memory accounting granularity.
  kv_block_tokens: int = 16

  def __post_init__(self):
    for name in ("prompt_token_budget", "max_prefill_batch", "chunk_token_budget",
                 "borrow_prompt_tokens", "kv_block_tokens"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"scheduler.{name} must be positive, got {getattr(self, name)}")
    if not 0.0 < self.borrow_kv_fraction <= 1.0:
      raise ConfigError(f"scheduler.borrow_kv_fraction must be in (0, 1], "
                        f"got {self.borrow_kv_fraction}")
    if self.max_preemptions < 0:
      raise ConfigError("scheduler.max_preemptions must be >= 0")
    if self.mixed_pool and self.policy != ClusterPolicy.SPLIT:
      raise ConfigError("scheduler.mixed_pool needs scheduler.policy=split")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
  """Instances carved from the devices in order, each a ``instance_mesh``-shaped
  mesh (its ``first_device`` is where the first instance starts).

  SPLIT uses ``prompt_instances`` then ``token_instances``; the co-located
  policies use ``colocated_instances``.
  """
  prompt_instances: int = 2
  token_instances: int = 2
  colocated_instances: int = 4
  instance_mesh: MeshConfig = MeshConfig(dp=1, tp=2)
  transfer: TransferMode = TransferMode.AUTO
  # KV tokens an instance may hold; 0 -> decode_slots x max_cache_len (all
  # of its cache). Smaller values emulate memory pressure.
  kv_capacity_tokens: int = 0
  # Multi-process runs (scripts/launch_local.py, or one process per node): the
  # pool of each process, e.g. "prompt,token,token"; "" -> the first half of
  # the processes prompt, the rest token (splitjax.distributed.layout).
  process_pools: str = ""

  def __post_init__(self):
    for name in ("prompt_instances", "token_instances", "colocated_instances"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"cluster.{name} must be positive, got {getattr(self, name)}")
    if self.kv_capacity_tokens < 0:
      raise ConfigError("cluster.kv_capacity_tokens must be >= 0")
    if self.process_pools:
      from splitjax.distributed.layout import ProcessLayout
      n = len(self.process_pools.split(","))
      ProcessLayout.parse(self.process_pools, n)      # raises ConfigError naming a bad item


class WorkloadSource(enum.Enum):
  TRACE = "trace"       # replay an Azure-schema CSV (window, rate scale)
  POISSON = "poisson"   # synthetic arrivals, lengths drawn from the trace
  GAMMA = "gamma"


@dataclasses.dataclass(frozen=True)
class WorkloadConfig:
  """What to replay. ``trace`` is ``conv`` / ``code`` (the shared Azure 2023
  traces under ``data_dir``, default ``../shared/data``) or a CSV path."""
  source: WorkloadSource = WorkloadSource.TRACE
  trace: str = "conv"
  data_dir: str = ""
  start_s: float = 0.0
  duration_s: float = 60.0          # window of the trace; 0 -> to the end
  rate_scale: float = 1.0           # >1 replays faster (higher rate)
  # > 0: instead of the trace's own arrival times, Poisson arrivals at this
  # many requests per second, (prompt, output) sizes resampled jointly from
  # the trace window (seeded by ``seed``): as many requests as the window
  # holds (or max_requests), or all arriving within rate_duration_s if set.
  rate: float = 0.0
  rate_duration_s: float = 0.0
  max_requests: int = 0             # 0 -> no cap
  # Length caps (0 -> none). Prompt + output is always capped to the
  # instance's max_cache_len (prompt first, then output), as the paper's
  # lengths are forced.
  max_prompt_tokens: int = 0
  max_output_tokens: int = 0
  # Synthetic arrivals.
  rate_per_s: float = 1.0
  num_requests: int = 100
  cv: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.rate_scale <= 0 or self.rate_per_s <= 0:
      raise ConfigError("workload.rate_scale and workload.rate_per_s must be positive")
    if self.rate < 0 or self.rate_duration_s < 0:
      raise ConfigError("workload.rate and workload.rate_duration_s must be >= 0")
    if self.rate_duration_s and not self.rate:
      raise ConfigError("workload.rate_duration_s needs workload.rate > 0")
    if self.rate and (self.rate_scale != 1.0 or self.source != WorkloadSource.TRACE):
      raise ConfigError("workload.rate resamples the trace at a fixed rate: it cannot be "
                        "combined with workload.rate_scale or a synthetic workload.source")
    for name in ("duration_s", "max_requests", "max_prompt_tokens", "max_output_tokens"):
      if getattr(self, name) < 0:
        raise ConfigError(f"workload.{name} must be >= 0")
    if self.num_requests <= 0 or self.cv <= 0:
      raise ConfigError("workload.num_requests and workload.cv must be positive")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Everything ``scripts/serve.py`` needs. Generation is greedy and forced to
  each request's output length (EOS is not special), as in the paper."""
  model: ModelConfig
  engine: EngineConfig = EngineConfig()
  cluster: ClusterConfig = ClusterConfig()
  scheduler: SchedulerConfig = SchedulerConfig()
  workload: WorkloadConfig = WorkloadConfig()
  seed: int = 0                 # random weights when no checkpoint is given
  prompt_seed: int = 0          # random prompt token ids
  # Seconds between pool-occupancy samples in the timeline.
  sample_every_s: float = 0.5

  def __post_init__(self):
    if (self.scheduler.policy == ClusterPolicy.COLOCATED_CHUNKED
        and self.scheduler.chunk_token_budget <= self.engine.decode_slots):
      raise ConfigError(
          f"scheduler.chunk_token_budget ({self.scheduler.chunk_token_budget}) must exceed "
          f"engine.decode_slots ({self.engine.decode_slots}) so prompts can always progress")
    if self.sample_every_s <= 0:
      raise ConfigError("sample_every_s must be positive")

  @property
  def num_instances(self) -> int:
    c = self.cluster
    if self.scheduler.policy == ClusterPolicy.SPLIT:
      return c.prompt_instances + c.token_instances
    return c.colocated_instances
