"""Splitwise-HH: 25 prompt + 15 token DGX-H100 machines serving Llama2-70B on the
whole one-hour conversation trace, mixed pool on.

40 DGX-H100 is the paper's iso-power budget (GPU power, Table I: 40 x 8 x 700 W =
224 kW = 70 DGX-A100 x 8 x 400 W); 25 + 15 is the paper's split for conversation.

  python scripts/simulate.py --config configs/sim/splitwise_hh.py --output_dir runs/sim_hh
  python scripts/simulate.py --config configs/sim/splitwise_hh.py --config.workload.rate_scale=4
  python scripts/simulate.py --config configs/sim/splitwise_hh.py --config.leap=false
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(prompt=PoolConfig(25, "dgx-h100"), token=PoolConfig(15, "dgx-h100"))
