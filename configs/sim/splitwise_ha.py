"""Splitwise-HA: 25 DGX-H100 prompt machines + 26 DGX-A100 token machines serving
Llama2-70B on the whole one-hour conversation trace, mixed pool on.

Iso-power with Splitwise-HH (GPU power, Table I): HH's 25 H100 prompt machines
stay; the power of its 15 H100 token machines (15 x 8 x 700 W = 84 kW) buys
84 kW / (8 x 400 W) = 26.25 -> 26 DGX-A100 token machines (223.2 of 224 kW; a
derived count, not the paper's searched optimum).

  python scripts/simulate.py --config configs/sim/splitwise_ha.py --output_dir runs/sim_ha
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(prompt=PoolConfig(25, "dgx-h100"), token=PoolConfig(26, "dgx-a100"))
