"""Shared pieces of the ``configs/`` serving files, so the four policies are
compared on identical engines and workloads."""

from __future__ import annotations

from splitjax.config import EngineConfig


def cpu_engine() -> EngineConfig:
  """`tiny` on CPU: 16 decode slots of 2048 positions, buckets up to 2048."""
  return EngineConfig(prefill_buckets=(64, 128, 256, 512, 1024, 2048), decode_slots=16,
                      max_cache_len=2048, layer_group_size=1)


def cpu_workload() -> dict:
  """The first 60 s of the Azure conversation trace, prompts capped to 1024
  tokens and outputs to 128 so a replay takes a few minutes on 2 cores."""
  return dict(trace="conv", start_s=0.0, duration_s=60.0, max_prompt_tokens=1024,
              max_output_tokens=128)
