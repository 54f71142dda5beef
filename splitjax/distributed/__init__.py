"""Prompt and token pools in separate processes on JAX's multi-controller runtime.

- ``layout``: which pool each process's devices serve (``ProcessLayout``).
- ``launch``: process coordinates from flags / environment / JAX's cluster
  auto-detection, and ``jax.distributed.initialize`` with the CPU settings
  cross-process transfers need (a transfer socket per process; no gloo by default).
- ``control``: the control plane over the coordination service's key-value
  store (broadcast decisions, waits that notice dead peers, abort).
- ``kv_transfer``: KV prefixes moved between processes with ``jax.device_put``
  in the canonical layout, checked against a per-transfer handshake.
- ``generate``: the Generator's waves with prefill and decode in different
  processes.
"""
