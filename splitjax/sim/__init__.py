"""Cluster-simulator groundwork: hardware catalog, performance models, KV transfer.

- ``hardware``: machine kinds as data (``hardware_catalog.json``), instance power.
- ``perf_model``: the ``PerfModel`` interface; ``ProfilePerfModel`` (the paper's
  measured profiles) and ``RooflineModel`` (FLOPs and bytes).
- ``network``: GQA-aware KV bytes, serialized and layer-wise transfer times.

Plain Python + numpy: nothing here imports jax (a test checks), so the
simulator runs the scheduling code without devices.
"""

from splitjax.sim.hardware import (Hardware, HardwareError, PhasePower, get_hardware,
                                   hardware_for_device, instance_power_w, load_catalog)
from splitjax.sim.network import (kv_bytes, kv_transfer_exposed_time, layerwise_exposed_time,
                                  link_bytes_per_s, transfer_time)
from splitjax.sim.perf_model import (PerfModel, PerfModelError, Phase, ProfilePerfModel,
                                     RooflineModel, default_profile_path)
