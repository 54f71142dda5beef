"""Baseline-A100: 70 DGX-A100 machines, each running both phases (co-located,
prefill-first iteration batching as vLLM / Orca), serving Llama2-70B on the whole
one-hour conversation trace.

70 DGX-A100 is the paper's iso-power match of 40 DGX-H100 (GPU power, Table I:
70 x 8 x 400 W = 40 x 8 x 700 W = 224 kW).

  python scripts/simulate.py --config configs/sim/baseline_a100.py --output_dir runs/sim_base_a100
"""

from splitjax.sim.sim_config import PoolConfig, design_config_dict


def get_config():
  return design_config_dict(colocated=PoolConfig(70, "dgx-a100"))
