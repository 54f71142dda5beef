"""Default ConfigDicts that ``configs/*.py`` files start from.

These build plain ml_collections ConfigDicts (every field present, so any can
be overridden with ``--config.section.field=value``); turning them into typed
dataclasses is :func:`splitjax.config.from_config_dict`'s job.
"""

from __future__ import annotations

import ml_collections

from splitjax.config import EngineConfig, MeshConfig, SamplingConfig, to_plain_dict
from splitjax.model.presets import preset_config_dict


def section(obj) -> ml_collections.ConfigDict:
  """A dataclass (config section) as a ConfigDict; sequences stay tuples so that
  ``--config.engine.prefill_buckets='(64, 128)'`` can override them."""
  tuples = lambda d: {k: tuples(v) if isinstance(v, dict) else
                      tuple(v) if isinstance(v, list) else v for k, v in d.items()}
  return ml_collections.ConfigDict(tuples(to_plain_dict(obj)))


def generate_config(preset: str, prefill_mesh: MeshConfig, decode_mesh: MeshConfig,
                    engine: EngineConfig, max_new_tokens: int = 16) -> ml_collections.ConfigDict:
  """Config for ``scripts/generate.py`` (see ``splitjax.config.GenerateConfig``)."""
  c = ml_collections.ConfigDict()
  c.model = preset_config_dict(preset)
  c.prefill_mesh = section(prefill_mesh)
  c.decode_mesh = section(decode_mesh)
  c.engine = section(engine)
  c.sampling = section(SamplingConfig())
  c.mode = "split"          # split | single
  c.transfer = "auto"       # serialized | layerwise | auto (layer-wise from layerwise_min_tokens)
  c.max_new_tokens = max_new_tokens
  c.prefill_token_budget = 2048  # padded prompt tokens per prefill program
  c.seed = 0                # seed of random weights when no checkpoint is given
  return c


def serve_config(preset: str, engine: EngineConfig, *, policy: str = "split",
                 mixed_pool: bool = False) -> ml_collections.ConfigDict:
  """Config for ``scripts/serve.py`` (see ``splitjax.serve_config.ServeConfig``)."""
  from splitjax.serve_config import ClusterConfig, SchedulerConfig, WorkloadConfig
  c = ml_collections.ConfigDict()
  c.model = preset_config_dict(preset)
  c.engine = section(engine)
  c.cluster = section(ClusterConfig())
  c.scheduler = section(SchedulerConfig())
  c.scheduler.policy = policy          # split | colocated | colocated_chunked
  c.scheduler.mixed_pool = mixed_pool
  c.workload = section(WorkloadConfig())
  c.seed = 0                           # random weights when no checkpoint is given
  c.prompt_seed = 0                    # random prompt token ids
  c.sample_every_s = 0.5               # pool-occupancy timeline resolution
  return c
