"""Splitwise-AA: 44 prompt + 26 token DGX-A100 machines serving Llama2-70B on the
whole one-hour conversation trace, mixed pool on.

Iso-power with Splitwise-HH (GPU power, Table I): 40 DGX-H100 x 8 x 700 W = 224 kW
buys 70 DGX-A100 (8 x 400 W = 3.2 kW each). The prompt share is HH's, 25 / 40:
70 x 25 / 40 = 43.75 -> 44 prompt machines, 26 token machines (a derived count, not
the paper's searched optimum).

  python scripts/simulate.py --config configs/sim/splitwise_aa.py --output_dir runs/sim_aa
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(prompt=PoolConfig(44, "dgx-a100"), token=PoolConfig(26, "dgx-a100"))
