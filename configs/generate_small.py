"""Generate with the `small` preset (~124M params, 4 KV heads), one device per mesh.

  python scripts/generate.py --config configs/generate_small.py --prompt_ids 1,2,3
"""

from splitjax.config import EngineConfig, MeshConfig
from splitjax.config_defaults import generate_config


def get_config():
  return generate_config(
      "small",
      prefill_mesh=MeshConfig(dp=1, tp=1, first_device=0),
      decode_mesh=MeshConfig(dp=1, tp=1, first_device=4),
      engine=EngineConfig(decode_slots=8, max_cache_len=1024, layer_group_size=3))
