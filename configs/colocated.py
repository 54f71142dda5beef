"""Co-located baseline (vLLM / Orca iteration-level batching, prefill first) on the
same 8 devices: 4 instances x 2 devices, each running both phases.

  python scripts/serve.py --config configs/colocated.py --output_dir runs/colocated
"""

from splitjax.config_defaults import serve_config
from splitjax.serve_config_presets import cpu_engine, cpu_workload


def get_config():
  c = serve_config("tiny", cpu_engine(), policy="colocated")
  c.workload.update(cpu_workload())
  return c
