"""Small builders for policy tests."""

from splitjax.scheduling.kv_memory import KVMemory
from splitjax.scheduling.records import Instance, Request, Role


def inst(name, role, capacity=4096, slots=8, max_tokens=4096):
  return Instance(name, role, KVMemory(capacity), slots, max_tokens)


def req(i, prompt, output, arrival=0.0, prompt_inst="", token_inst=""):
  return Request(i, arrival, prompt, output, prompt_instance=prompt_inst,
                 token_instance=token_inst)
