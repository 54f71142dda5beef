"""The cluster simulator (plain Python + numpy: nothing here imports jax, a test checks).

- ``hardware``: machine kinds as data (``hardware_catalog.json``), instance power.
- ``perf_model``: the ``PerfModel`` interface and ``ProfilePerfModel`` (the paper's
  measured profiles); ``roofline``: ``RooflineModel`` (FLOPs and bytes).
- ``network``: GQA-aware KV bytes, serialized and layer-wise transfer times.
- ``driver``: the discrete-event ``Simulator`` driving the scheduling policies;
  ``sim_config`` / ``build``: a ``SimConfig`` turned into a ready simulator.
"""
