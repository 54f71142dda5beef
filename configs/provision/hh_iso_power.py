"""Splitwise-HH provisioning at iso-power: DGX-H100 prompt + DGX-H100 token
machines (mixed pool on) within the power of 40 DGX-H100 (GPU power, Table I:
40 x 8 x 700 W = 224 kW, the budget of configs/sim/), Llama2-70B on the
conversation trace (sizes resampled from the whole hour), the paper's nine SLOs.

Layouts: every prompt count on a grid of 5 (5 + 35 ... 35 + 5), then every
count within 4 of the best; each gets its max rate (Poisson probes of at least
120 s of arrivals, judged from 25% to 75% of them: steady state; bisected to
2.5%). The paper's split for conversation is 25 + 15.

  python scripts/provision.py --config configs/provision/hh_iso_power.py --output_dir runs/prov_hh
  ... --config.space.refine_step=0          # grid only
  ... --config.space.token_kinds='("dgx-h100", "dgx-h100-pcap")'   # HHcap token machines too
"""

from splitjax.provision import (Budget, BudgetKind, SearchSpace, machine_price,
                                provision_config_dict)
from splitjax.sim.hardware import get_hardware
from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  power_w = 40 * machine_price(get_hardware("dgx-h100")).power_w      # 224 kW
  sim = design_config_dict(prompt=PoolConfig(25, "dgx-h100"), token=PoolConfig(15, "dgx-h100"))
  return provision_config_dict(
      sim, Budget(BudgetKind.ISO_POWER, power_w=power_w),
      SearchSpace(prompt_kinds=("dgx-h100",), token_kinds=("dgx-h100",), step=5,
                  refine_step=1))
