"""Generate with the `tiny` preset: prefill on devices 0-1, decode on 4-5 (tp=2 each).

  python scripts/generate.py --config configs/generate_tiny.py --prompt_ids 1,2,3
  python scripts/generate.py --config configs/generate_tiny.py --config.mode=single
"""

from splitjax.config import EngineConfig, MeshConfig
from splitjax.config_defaults import generate_config


def get_config():
  return generate_config(
      "tiny",
      prefill_mesh=MeshConfig(dp=1, tp=2, first_device=0),
      decode_mesh=MeshConfig(dp=1, tp=2, first_device=4),
      engine=EngineConfig(decode_slots=8, max_cache_len=1024, layer_group_size=1))
