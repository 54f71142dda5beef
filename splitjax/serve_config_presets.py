"""Shared pieces of the ``configs/`` serving files, so the four policies are
compared on identical engines and workloads."""

from __future__ import annotations

from splitjax.config import EngineConfig


def cpu_engine() -> EngineConfig:
  """`tiny` on CPU: 16 decode slots of 1152 positions (the workload's 1024-token
  prompt cap + 128-token output cap), prompt buckets up to 1024. Decode attends
  over the whole cache, so its length sets the step time: 14 ms per step here
  at 1152 positions vs 20 ms at 2048 (one instance alone on the machine)."""
  return EngineConfig(prefill_buckets=(64, 128, 256, 512, 1024), decode_slots=16,
                      max_cache_len=1152, layer_group_size=1)


def cpu_workload() -> dict:
  """The first 60 s of the Azure conversation trace, prompts capped to 1024
  tokens and outputs to 128 so a replay takes a few minutes on 2 cores."""
  return dict(trace="conv", start_s=0.0, duration_s=60.0, max_prompt_tokens=1024,
              max_output_tokens=128)
