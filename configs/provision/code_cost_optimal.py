"""The cost-optimal Splitwise-HH cluster at 70 req/s on the code trace: the
cheapest DGX-H100 prompt + DGX-H100 token layout (mixed pool on) serving 70 req/s
of Poisson arrivals with sizes resampled from the whole code trace, Llama2-70B,
all nine SLOs (the paper's iso-throughput, cost-optimized HH design).

Search: a saddleback walk over prompt / token counts on a grid of 5 up to 40 per
pool (one steady-state probe, 120 s at 70 req/s, per layout), then on a grid of 1
bounded by the grid's cheapest; the winner's max rate is then bisected.

  python scripts/provision.py --config configs/provision/code_cost_optimal.py \
      --output_dir runs/prov_code
  ... --config.budget.minimize=power        # lowest power instead
  ... --config.budget.rate=100
"""

from splitjax.provision import (Budget, BudgetKind, Objective, SearchSpace,
                                provision_config_dict)
from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  sim = design_config_dict(prompt=PoolConfig(25, "dgx-h100"), token=PoolConfig(15, "dgx-h100"))
  sim.workload.trace = "code"
  return provision_config_dict(
      sim, Budget(BudgetKind.ISO_THROUGHPUT, rate=70.0, minimize=Objective.COST),
      SearchSpace(prompt_kinds=("dgx-h100",), token_kinds=("dgx-h100",), step=5,
                  max_machines=40, refine_step=1))
