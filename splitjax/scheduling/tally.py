"""Tally: a running total that containers add their changes to (no jax).

An instance's queues and KV memory each add every change of their token (or
request) count to a :class:`Tally` as it happens. Pointing the same tallies
of many instances at one object keeps a cluster-wide sum up to date at the
cost of one addition per change, which a watcher (the mixed pool) reads in
O(1) instead of re-reading every instance that changed.
"""

from __future__ import annotations


class Tally:
  """``value``: an integer total (tokens or requests)."""
  __slots__ = ("value",)

  def __init__(self, value: int = 0):
    self.value = value

  def __repr__(self) -> str:
    return f"Tally({self.value})"
