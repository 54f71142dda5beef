"""ISO_THROUGHPUT search: the cheapest layout meeting a rate, walked on the
(prompt, token) grid by :class:`Staircase` (no jax)."""

from __future__ import annotations

import itertools
import math
from typing import Callable, Mapping, Sequence

from splitjax.provision_layout import Budget, Design, Layout, Pool, Price, SearchSpace
from splitjax.provision_results import LayoutResult


class Staircase:
  """The cheapest feasible layout of one kind (pair) on a grid of ``counts``,
  under the monotonicity assumption. Split: column by column (prompt counts
  upwards), the fewest feasible token machines, searched only below the last
  column's (more prompt machines never need more token machines): galloping
  down from there (1, 2, 4 ... grid steps) until infeasible, then bisecting. So
  no layout dominated by an infeasible one (or dominating a feasible one) is
  probed, and a layout costing ``bound`` or more is never probed (it is as good
  as feasible: nothing dearer can win). ``columns``: the prompt counts to walk
  (default: ``counts``). Co-located: one column of counts."""

  def __init__(self, prompt_kind: str, token_kind: str | None, counts: Sequence[int],
               columns: Sequence[int] | None = None):
    self.kinds, self.counts = (prompt_kind, token_kind), list(counts)
    self.columns = (list(columns) if columns is not None else self.counts) if token_kind else [0]
    self.i, self.j, self.top, self.low, self.gap = 0, 0, len(self.counts), -1, 1
    self.pending: Layout | None = None     # returned by next(), awaiting update()

  def _layout(self, j: int) -> Layout:
    pk, tk = self.kinds
    if tk is None:
      return Layout(colocated=Pool(self.counts[j], pk))
    return Layout(Pool(self.columns[self.i], pk), Pool(self.counts[j], tk))

  def next(self, budget: Budget, price: Mapping[str, Price], bound: float) -> Layout | None:
    """The layout to probe next (None: done). Token counts of index >= ``top``
    are known feasible or too dear, <= ``low`` infeasible (this column)."""
    if self.pending is not None:
      return self.pending
    while self.i < len(self.columns):
      while self.top > 0 and budget.measure(self._layout(self.top - 1).price(price)) >= bound:
        self.top -= 1
      if self.top - self.low > 1:
        self.j = ((self.low + self.top) // 2 if self.low >= 0
                  else max(self.top - self.gap, 0))
        self.pending = self._layout(self.j)
        return self.pending
      self.i, self.low, self.gap = self.i + 1, -1, 1
    return None

  def update(self, feasible: bool) -> None:
    """The outcome of the layout :meth:`next` returned."""
    self.pending = None
    if feasible:
      self.top, self.gap = self.j, self.gap * 2
    else:
      self.low = self.j


def walk(design: Design, space: SearchSpace, step: int, budget: Budget,
         price: Mapping[str, Price], at_rate: Callable[[Sequence[Layout]], list[LayoutResult]],
         known: dict[Layout, LayoutResult], near: Mapping[tuple, int] | None = None,
         within: int = 0) -> None:
  """One :class:`Staircase` per kind (pair) on the grid of ``step``, advanced in
  rounds: each round probes every walk's next layout at once (``at_rate``: one
  probe each at ``budget.rate``, in parallel), so
  what is probed does not depend on timing or workers. ``known`` (layout ->
  result) is extended; what it holds or implies (:func:`implied`) is not
  probed again, and its cheapest feasible layout bounds the walks. ``near``
  ((prompt kind, token kind) -> prompt count): those pairs walk only the prompt
  counts less than ``within`` away from it."""
  counts = range(step, space.max_machines + 1, step)
  pairs = (itertools.product(space.prompt_kinds, space.token_kinds) if design == Design.SPLIT
           else ((k, None) for k in space.colocated_kinds))
  near = near or {}
  walks = [Staircase(pk, tk, counts, [c for c in counts if abs(c - near[(pk, tk)]) < within]
                     if (pk, tk) in near else None) for pk, tk in pairs]
  while True:
    asks = []
    for w in walks:
      while (lay := w.next(budget, price, bound(known, budget))) is not None:
        feasible = implied(known, lay)
        if feasible is None:
          break
        w.update(feasible)
      if lay is not None and lay not in asks:
        asks.append(lay)
    if not asks:
      return
    for lay, row in zip(asks, at_rate(asks)):
      known[lay] = row


def implied(known: Mapping[Layout, LayoutResult], layout: Layout) -> bool | None:
  """Feasibility of ``layout`` known or implied by monotonicity in machines: it is
  infeasible if dominated by an infeasible layout, feasible if it dominates a
  feasible one (None: unknown)."""
  if layout in known:
    return known[layout].feasible
  for r in known.values():
    if (layout.dominated_by(r.layout) and not r.feasible or
        r.layout.dominated_by(layout) and r.feasible):
      return r.feasible
  return None


def bound(known: Mapping[Layout, LayoutResult], budget: Budget) -> float:
  """The cheapest feasible layout's cost or power (inf: none yet)."""
  return min((budget.measure(r.price) for r in known.values() if r.feasible), default=math.inf)


def cheapest_by_pair(known: Mapping[Layout, LayoutResult],
                     budget: Budget) -> dict[tuple[str, str], int]:
  """Split layouts: each kind pair's cheapest feasible layout's prompt count."""
  best: dict[tuple[str, str], LayoutResult] = {}
  for r in known.values():
    lay = r.layout
    if r.feasible and lay.prompt is not None:
      key = (lay.prompt.kind, lay.token.kind)
      if key not in best or budget.measure(r.price) < budget.measure(best[key].price):
        best[key] = r
  return {k: r.layout.prompt.machines for k, r in best.items()}
