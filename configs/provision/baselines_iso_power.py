"""The co-located baselines at iso-power: the max rate of Baseline-H100 (40
DGX-H100) and Baseline-A100 (70 DGX-A100, the same GPU power: 224 kW) serving
Llama2-70B on the conversation trace under the paper's nine SLOs, to set
against the split layouts of hh_iso_power.py (same trace, probes and SLOs).

  python scripts/provision.py --config configs/provision/baselines_iso_power.py \
      --output_dir runs/prov_base
  ... --config.budget.kind=iso_cost --config.budget.cost_per_hour_usd=1520   # 40 H100 vs 86 A100
"""

from splitjax.provision import (Budget, BudgetKind, SearchSpace, machine_price,
                                provision_config_dict)
from splitjax.sim.hardware import get_hardware
from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  power_w = 40 * machine_price(get_hardware("dgx-h100")).power_w      # 224 kW
  sim = design_config_dict(colocated=PoolConfig(40, "dgx-h100"))
  return provision_config_dict(sim, Budget(BudgetKind.ISO_POWER, power_w=power_w),
                               SearchSpace(colocated_kinds=("dgx-h100", "dgx-a100")))
