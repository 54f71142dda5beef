"""Splitwise on 8 CPU devices: 2 prompt instances + 2 token instances, 2 devices
(tp=2) each, replaying a slice of the Azure conversation trace. `make serve` runs this.

  python scripts/serve.py --config configs/split.py --output_dir runs/split
  python scripts/serve.py --config configs/split.py --config.workload.rate_scale=2
"""

from splitjax.config_defaults import serve_config
from splitjax.serve_config_presets import cpu_engine, cpu_workload


def get_config():
  c = serve_config("tiny", cpu_engine(), policy="split")
  c.workload.update(cpu_workload())
  return c
