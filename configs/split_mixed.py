"""Splitwise with the mixed pool: 1 prompt instance + 3 token instances, and a borrowing
threshold low enough that bursts move token instances into the mixed pool.

  python scripts/serve.py --config configs/split_mixed.py --output_dir runs/split_mixed
"""

from splitjax.config_defaults import serve_config
from splitjax.serve_config_presets import cpu_engine, cpu_workload


def get_config():
  c = serve_config("tiny", cpu_engine(), policy="split", mixed_pool=True)
  c.cluster.prompt_instances = 1
  c.cluster.token_instances = 3
  c.scheduler.borrow_prompt_tokens = 2048
  c.scheduler.max_preemptions = 4
  c.workload.update(cpu_workload())
  return c
