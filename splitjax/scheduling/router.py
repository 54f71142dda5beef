"""Cluster-level routers: pick the instances of an arriving request.

A router only chooses; the coordinator enqueues and reserves.
"""

from __future__ import annotations

from typing import Sequence

from splitjax.scheduling.records import Instance, Request


class NoInstanceError(ValueError):
  """No instance can ever serve the request (the reason is the message)."""


def _token_candidates(request: Request, instances: Sequence[Instance]) -> list[Instance]:
  takers = [i for i in instances if i.takes_tokens]
  fits = [i for i in takers if i.fits_ever(request)]
  if not fits:
    limit = max((min(i.max_request_tokens, i.kv.total_blocks * i.kv.block_tokens)
                 for i in takers), default=0)
    raise NoInstanceError(f"request needs {request.total_tokens} tokens of KV (prompt "
                          f"{request.prompt_tokens} + output {request.output_tokens}); the "
                          f"largest a token instance can hold is {limit}")
  return fits


class JSQRouter:
  """Join-the-shortest-queue on pending tokens, choosing both instances at once
  (Splitwise's cluster scheduler).

  Prompt instances (prompt pool + mixed pool) are compared by pending prompt
  tokens, token instances (token pool + mixed pool) by KV in use plus reserved
  (``Instance.token_pressure``: as a fraction of capacity, with decode slots
  counted when they are the tighter limit); ties go to the first by name.
  """

  def route(self, request: Request, instances: Sequence[Instance]) -> tuple[Instance, Instance]:
    prompts = [i for i in instances if i.takes_prompts]
    if not prompts:
      raise NoInstanceError("no instance takes prompts")
    token = min(_token_candidates(request, instances),
                key=lambda i: (i.token_pressure, i.token_load, i.name))
    prompt = min(prompts, key=lambda i: (i.pending_prompt_tokens, i.name))
    return prompt, token


class ColocatedJSQRouter:
  """Both phases on one instance: the one with the fewest outstanding requests
  (least-outstanding-requests balancing, as in front of vLLM replicas), then
  the fewest pending prompt tokens."""

  def route(self, request: Request, instances: Sequence[Instance]) -> tuple[Instance, Instance]:
    inst = min(_token_candidates(request, instances),
               key=lambda i: (i.outstanding, i.pending_prompt_tokens, i.name))
    return inst, inst
