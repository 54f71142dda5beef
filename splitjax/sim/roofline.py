"""Roofline performance model: FLOPs and bytes of a model on a machine kind.

For hardware or models with no measured profile. Plain Python + numpy: no jax.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from splitjax.config import ModelConfig
from splitjax.sim.hardware import Hardware, PhasePower, instance_power_w
from splitjax.sim.perf_model import Phase, PerfModelError, _chunks, _lengths


@dataclasses.dataclass(frozen=True)
class RooflineModel:
  """time = max(FLOPs / (tp x peak x compute eff), bytes / (tp x HBM bw x memory eff))
  + a fixed per-iteration overhead.

  Prefill bytes: weights + the KV written; decode bytes: weights + the KV of
  every context read (GQA-aware, ``ModelConfig.kv_bytes_per_token``). Peak is
  the device's fp16/bf16 tensor peak. Tensor-parallel communication is not
  modelled except through the overheads.

  Defaults are fitted to the A100 Llama2-70B tp=8 profile (log-RMS): prefill
  on batches of <= 2048 tokens (Splitwise's prompt batch cap), decode on all
  points. The decode compute efficiency (0.10) is what the profile implies:
  its iterations grow from 45 ms at batch 16 to 71 ms at batch 64.
  """
  model: ModelConfig
  hw: Hardware
  tp: int = 8
  prefill_compute_efficiency: float = 0.49
  decode_compute_efficiency: float = 0.10
  memory_efficiency: float = 0.8
  prefill_overhead_s: float = 0.044
  decode_overhead_s: float = 0.035
  phase_power: PhasePower = PhasePower()

  def __post_init__(self):
    if not 1 <= self.tp <= self.hw.devices_per_machine:
      raise PerfModelError(f"tp must be in 1..{self.hw.devices_per_machine} for "
                           f"'{self.hw.name}', got {self.tp}")
    for f in ("prefill_compute_efficiency", "decode_compute_efficiency", "memory_efficiency"):
      if not 0.0 < getattr(self, f) <= 1.0:
        raise PerfModelError(f"{f} must be in (0, 1], got {getattr(self, f)}")
    if self.prefill_overhead_s < 0 or self.decode_overhead_s < 0:
      raise PerfModelError("overheads must be >= 0 seconds")

  @property
  def weight_bytes(self) -> float:
    return float(self.model.param_count() * self.model.bytes_per_param)

  def _time(self, prefill_flops: float, decode_flops: float, nbytes: float) -> float:
    peak = self.tp * self.hw.device_flops
    compute = (prefill_flops / (peak * self.prefill_compute_efficiency)
               + decode_flops / (peak * self.decode_compute_efficiency))
    memory = nbytes / (self.tp * self.hw.device_memory_bytes_per_s * self.memory_efficiency)
    return max(compute, memory)

  def _decode_flops(self, ctx: Sequence[int]) -> float:
    return self._decode_flops_sum(len(ctx), sum(ctx))

  def _decode_flops_sum(self, batch: int, context_sum: int) -> float:
    f0 = self.model.flops_per_token(0)
    return batch * f0 + (self.model.flops_per_token(1) - f0) * context_sum

  def prefill_time(self, prompt_lens: Sequence[int]) -> float:
    lens = _lengths("prompt lengths", prompt_lens, 1)
    if not lens:
      return 0.0
    flops = sum(self.model.prefill_flops(n) for n in lens)
    nbytes = self.weight_bytes + sum(lens) * self.model.kv_bytes_per_token()
    return self._time(flops, 0.0, nbytes) + self.prefill_overhead_s

  def decode_time(self, context_lens: Sequence[int]) -> float:
    ctx = _lengths("context lengths", context_lens, 0)
    return self.decode_step_time(len(ctx), sum(ctx))

  def decode_step_time(self, batch: int, context_sum: int) -> float:
    return float(self.decode_step_times(batch, np.array([context_sum], np.float64))[0])

  def decode_step_times(self, batch: int, context_sums: np.ndarray) -> np.ndarray:
    if batch <= 0:
      return np.zeros(len(context_sums))
    ctx = np.asarray(context_sums, np.float64)
    nbytes = self.weight_bytes + ctx * self.model.kv_bytes_per_token()
    compute = self._decode_flops_sum(batch, ctx) / (
        self.tp * self.hw.device_flops * self.decode_compute_efficiency)
    memory = nbytes / (self.tp * self.hw.device_memory_bytes_per_s * self.memory_efficiency)
    return np.maximum(compute, memory) + self.decode_overhead_s

  def mixed_time(self, context_lens: Sequence[int],
                 chunks: Sequence[tuple[int, int]]) -> float:
    """Chunk (start, length) FLOPs = prefill_flops(start + length) - prefill_flops(start)
    + the LM head, at prefill efficiency; decode rows keep decode efficiency. Bytes
    add each chunk's cached prefix (read) and its new KV (written)."""
    ctx = _lengths("context lengths", context_lens, 0)
    parts = _chunks(chunks)
    if not parts:
      return self.decode_time(ctx)
    m = self.model
    head = m.prefill_flops(0)
    flops = sum(m.prefill_flops(s + n) - m.prefill_flops(s) + head for s, n in parts)
    kv_tokens = sum(ctx) + sum(s + n for s, n in parts)
    nbytes = self.weight_bytes + kv_tokens * m.kv_bytes_per_token()
    overhead = max(self.prefill_overhead_s, self.decode_overhead_s if ctx else 0.0)
    return self._time(flops, self._decode_flops(ctx), nbytes) + overhead

  def power_w(self, phase: Phase) -> float:
    return instance_power_w(self.hw, self.tp, getattr(self.phase_power, phase.value))
