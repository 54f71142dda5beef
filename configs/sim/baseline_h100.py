"""Baseline-H100: 40 DGX-H100 machines, each running both phases (co-located,
prefill-first iteration batching as vLLM / Orca), serving Llama2-70B on the whole
one-hour conversation trace.

40 DGX-H100 is the paper's iso-power budget (GPU power, Table I: 40 x 8 x 700 W =
224 kW).

  python scripts/simulate.py --config configs/sim/baseline_h100.py --output_dir runs/sim_base_h100
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(colocated=PoolConfig(40, "dgx-h100"))
