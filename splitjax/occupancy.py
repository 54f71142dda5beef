"""Cluster occupancy samples: queue lengths, transfers, decode rows, KV in use
and pool sizes at one instant (pure Python, no jax; the runtime loop and the
simulator take them on a fixed period)."""

from __future__ import annotations

from splitjax.metrics import PoolSample
from splitjax.scheduling.coordinator import Coordinator
from splitjax.scheduling.records import Phase, Role


def pool_sample(coord: Coordinator, now: float) -> PoolSample:
  """Occupancy of the whole cluster at ``now`` (one pass over the instances)."""
  prompt, token, mixed, colocated = Role.PROMPT, Role.TOKEN, Role.MIXED, Role.COLOCATED
  moving = Phase.TRANSFERRING
  n_prompt = n_token = n_mixed = n_colocated = 0
  busy = queued = queued_tokens = transferring = waiting = decoding = cap = used = 0
  for i in coord.instances:
    role = i.role
    if role is prompt:
      n_prompt += 1
    elif role is token:
      n_token += 1
    elif role is mixed:
      n_mixed += 1
    elif role is colocated:
      n_colocated += 1
    busy += i.busy
    q = i.prompt_queue
    queued += len(q)
    queued_tokens += q.tokens + i.prefilling.tokens
    if i.held:
      transferring += sum(r.phase is moving for r in i.held.values())
    waiting += len(i.decode_queue)
    decoding += len(i.decoding)
    kv = i.kv
    cap += kv.total_blocks * kv.block_tokens
    used += kv.used_blocks * kv.block_tokens
  return PoolSample(
      t_s=now, prompt_instances=n_prompt, token_instances=n_token,
      mixed_instances=n_mixed, colocated_instances=n_colocated,
      busy_instances=busy, queued_prompts=queued, queued_prompt_tokens=queued_tokens,
      transferring=transferring, waiting_decode=waiting, decoding=decoding,
      kv_used_fraction=used / cap if cap else 0.0)
