"""Small builders for policy tests."""

from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.records import Instance, Request, Role


def inst(name, role, capacity=4096, slots=8, max_tokens=4096):
  return Instance(name, role, KVMemory(capacity), slots, max_tokens)


def req(i, prompt, output, arrival=0.0, prompt_inst="", token_inst=""):
  return Request(i, arrival, prompt, output, prompt_instance=prompt_inst,
                 token_instance=token_inst)


def assert_counters(i):
  """The O(1) load counters equal the sums they stand for."""
  assert i.pending_prompt_tokens == (sum(r.prompt_tokens for r in i.prompt_queue) + sum(
      r.prompt_tokens - r.prefilled for r in i.prefilling.values())), i.name
  assert i.reserved_tokens == sum(r.total_tokens for r in i.incoming.values()), i.name
  assert i.kv.used_blocks == sum(i.kv._held.values()), i.name
