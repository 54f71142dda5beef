"""Cluster-level routers: pick the instances of an arriving request.

A router only chooses; the coordinator enqueues and reserves. Routers see the
cluster through :class:`Candidates` (who takes prompts / tokens right now;
never an instance that is down),
which the coordinator caches between role changes so an arrival costs the
instances that can take it, not a scan of the cluster.
"""

from __future__ import annotations

import bisect
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
  """The instance with the smallest key among candidates, keys kept sorted.

  ``key(instance)`` must be unique per instance (it ends with the name). Keys
  are recomputed only for instances that changed since (registered in
  ``Instance.watchers``), each moved within the sorted order of the last
  candidate sequence seen, so a choice costs O(changes x log n); a new
  candidate sequence (a role change) is sorted once.
  """

  def __init__(self, key):
    self.key, self.dirty = key, set()
    self._cached: dict = {}        # instance -> its key when last computed
    self._last = None              # the candidate sequence ordered below
    self._members: set = set()     # ... as a set
    self._keys: list = []          # its instances' keys, ascending
    self._order: list = []         # ... and the instances, in the same order

  def best(self, instances: Sequence[Instance]) -> Instance:
    """The candidate with the smallest key (``instances`` must not be empty)."""
    cached, key = self._cached, self.key
    if instances is not self._last:
      for i in instances:
        if i not in cached:
          i.watchers.append(self.dirty)
          self.dirty.add(i)
      for i in self.dirty:
        cached[i] = key(i)
      self.dirty.clear()
      ranked = sorted((cached[i], n) for n, i in enumerate(instances))
      self._keys = [k for k, _ in ranked]
      self._order = [instances[n] for _, n in ranked]
      self._last, self._members = instances, set(instances)
      return self._order[0]
    if self.dirty:
      keys, order, members = self._keys, self._order, self._members
      for i in self.dirty:
        old, new = cached[i], key(i)
        if new == old:
          continue
        cached[i] = new
        if i in members:
          n = bisect.bisect_left(keys, old)
          del keys[n], order[n]
          n = bisect.bisect_left(keys, new)
          keys.insert(n, new)
          order.insert(n, i)
      self.dirty.clear()
    return self._order[0]


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
    token = self._token_keys.best(_token_candidates(request, cands))
    return self._prompt_keys.best(cands.prompts), token


class ColocatedJSQRouter:
  """Both phases on one instance: the one with the fewest outstanding requests
  (least-outstanding-requests balancing, as in front of vLLM replicas), then
  the fewest pending prompt tokens."""

  def __init__(self):
    self._keys = _Keys(lambda i: (i.outstanding, i.pending_prompt_tokens, i.name))

  def route(self, request: Request, instances: Sequence[Instance]) -> tuple[Instance, Instance]:
    return self.choose(request, Candidates.of(instances))

  def choose(self, request: Request, cands: Candidates) -> tuple[Instance, Instance]:
    inst = self._keys.best(_token_candidates(request, cands))
    return inst, inst
