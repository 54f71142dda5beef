"""Simulate Splitwise-HH: 25 prompt + 15 token DGX-H100 machines (40, the paper's
iso-power budget) serving Llama2-70B on the whole conversation trace.

  python scripts/simulate.py --config configs/sim_splitwise_hh.py
  python scripts/simulate.py --config configs/sim_splitwise_hh.py --config.workload.rate_scale=4
  python scripts/simulate.py --config configs/sim_splitwise_hh.py --config.leap=false
"""

import ml_collections

from splitjax.config_defaults import section
from splitjax.model.presets import preset_config_dict
from splitjax.serve_config import SchedulerConfig, WorkloadConfig
from splitjax.sim.sim_config import SimClusterConfig


def get_config():
  c = ml_collections.ConfigDict()
  c.model = preset_config_dict("llama2-70b")
  c.cluster = section(SimClusterConfig())
  c.scheduler = section(SchedulerConfig(mixed_pool=True))
  c.workload = section(WorkloadConfig(trace="conv", duration_s=0.0))
  c.leap = True
  c.sample_every_s = 1.0
  return c
