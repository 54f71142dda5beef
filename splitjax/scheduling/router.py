"""Cluster-level routers: pick the instances of an arriving request.

A router only chooses; the coordinator enqueues and reserves. Routers see the
cluster through :class:`Candidates` (who takes prompts / tokens right now;
never an instance that is down),
which the coordinator caches between role changes so an arrival costs the
instances that can take it, not a scan of the cluster.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from splitjax.scheduling.records import Instance, Request


class NoInstanceError(ValueError):
  """No instance can ever serve the request (the reason is the message)."""


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Instances taking new prompts and new token work (in cluster order), and
  the request size (prompt + output tokens) every token taker can hold."""
  prompts: tuple[Instance, ...]
  tokens: tuple[Instance, ...]
  fits_all_tokens: int

  @staticmethod
  def of(instances: Sequence[Instance]) -> "Candidates":
    tokens = tuple(i for i in instances if i.takes_tokens)
    return Candidates(tuple(i for i in instances if i.takes_prompts), tokens,
                      min((_largest(i) for i in tokens), default=0))


def _largest(i: Instance) -> int:
  """Largest prompt + output one request can ever hold on ``i``."""
  return min(i.max_request_tokens, i.kv.total_blocks * i.kv.block_tokens)


def _token_candidates(request: Request, cands: Candidates) -> Sequence[Instance]:
  if request.total_tokens <= cands.fits_all_tokens:
    return cands.tokens
  if not cands.tokens:
    raise NoInstanceError("no live instance takes tokens")
  fits = [i for i in cands.tokens if i.fits_ever(request)]
  if not fits:
    limit = max((_largest(i) for i in cands.tokens), default=0)
    raise NoInstanceError(f"request needs {request.total_tokens} tokens of KV (prompt "
                          f"{request.prompt_tokens} + output {request.output_tokens}); the "
                          f"largest a token instance can hold is {limit}")
  return fits


class _Keys:
  """Per-instance sort keys, recomputed only for instances that changed since
  (registered in ``Instance.watchers``), so a choice costs a C-level ``min``."""

  def __init__(self, key):
    self.key, self.cached, self.dirty = key, {}, set()
    self._last = None              # the last instance sequence seen (all cached)

  def __call__(self, instances: Sequence[Instance]) -> dict:
    cached, key = self.cached, self.key
    for i in self.dirty:
      cached[i] = key(i)
    self.dirty.clear()
    if instances is not self._last:
      for i in instances:
        if i not in cached:
          i.watchers.append(self.dirty)
          cached[i] = key(i)
      self._last = instances
    return cached


class JSQRouter:
  """Join-the-shortest-queue on pending tokens, choosing both instances at once
  (Splitwise's cluster scheduler).

  Prompt instances (prompt pool + mixed pool) are compared by pending prompt
  tokens, token instances (token pool + mixed pool) by KV in use plus reserved
  (``Instance.token_pressure``: as a fraction of capacity, with decode slots
  counted when they are the tighter limit); ties go to the first by name.
  """

  def __init__(self):
    self._prompt_keys = _Keys(lambda i: (i.pending_prompt_tokens, i.name))
    self._token_keys = _Keys(lambda i: (i.token_pressure, i.token_load, i.name))

  def route(self, request: Request, instances: Sequence[Instance]) -> tuple[Instance, Instance]:
    return self.choose(request, Candidates.of(instances))

  def choose(self, request: Request, cands: Candidates) -> tuple[Instance, Instance]:
    if not cands.prompts:
      raise NoInstanceError("no live instance takes prompts")
    tokens = _token_candidates(request, cands)
    token = min(tokens, key=self._token_keys(tokens).__getitem__)
    return min(cands.prompts, key=self._prompt_keys(cands.prompts).__getitem__), token


class ColocatedJSQRouter:
  """Both phases on one instance: the one with the fewest outstanding requests
  (least-outstanding-requests balancing, as in front of vLLM replicas), then
  the fewest pending prompt tokens."""

  def __init__(self):
    self._keys = _Keys(lambda i: (i.outstanding, i.pending_prompt_tokens, i.name))

  def route(self, request: Request, instances: Sequence[Instance]) -> tuple[Instance, Instance]:
    return self.choose(request, Candidates.of(instances))

  def choose(self, request: Request, cands: Candidates) -> tuple[Instance, Instance]:
    tokens = _token_candidates(request, cands)
    inst = min(tokens, key=self._keys(tokens).__getitem__)
    return inst, inst
