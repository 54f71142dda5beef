"""Co-located chunked-prefill baseline (Sarathi-Serve): 4 instances x 2 devices; each
iteration carries every decode plus prompt chunks up to 512 tokens.

  python scripts/serve.py --config configs/colocated_chunked.py --output_dir runs/chunked
"""

from splitjax.config_defaults import serve_config
from splitjax.serve_config_presets import cpu_engine, cpu_workload


def get_config():
  c = serve_config("tiny", cpu_engine(), policy="colocated_chunked")
  c.scheduler.chunk_token_budget = 512
  c.workload.update(cpu_workload())
  return c
