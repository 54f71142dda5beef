"""Splitwise-HHcap: 25 DGX-H100 prompt machines + 21 DGX-H100 token machines
power-capped to 70% (catalog kind dgx-h100-pcap) serving Llama2-70B on the whole
one-hour conversation trace, mixed pool on.

Iso-power with Splitwise-HH (GPU power, Table I): HH's 25 H100 prompt machines
stay; the power of its 15 H100 token machines buys 15 / 0.7 = 21.4 -> 21 capped
ones (25 x 5.6 + 21 x 3.92 = 222.3 of 224 kW; a derived count, not the paper's
searched optimum). The capped profile rows are synthetic (prompt time x 1.3).

  python scripts/simulate.py --config configs/sim/splitwise_hhcap.py --output_dir runs/sim_hhcap
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(prompt=PoolConfig(25, "dgx-h100"),
                            token=PoolConfig(21, "dgx-h100-pcap"))
