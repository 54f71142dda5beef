"""Max rates on a fixed lattice of rates, with warm starts (no jax).

:func:`splitjax.provision.max_rate` bisects each layout from its own starting
rate, so two layouts (or one layout in two searches) are probed at different
rates and its answer depends on where it started. Here every rate probed is a
point of one geometric lattice, ``(1 + tolerance) ** k`` req/s for integer
``k`` (:class:`RateLattice`): a layout's max rate is the highest lattice rate
it is feasible at (the next one being infeasible), whatever the order of the
probes, so under the monotonicity the searches assume (feasibility falls with
rate) any route gives the same answer, and identical probes asked by different
searches are identical cache entries.

:class:`LayoutRates` keeps what is known of one layout (the highest lattice
index probed feasible, the lowest probed infeasible) and answers "is it
feasible at index k?" from that or by one probe; :meth:`LayoutRates.resolve`
finds the max rate from a hint (a neighbour's or another search's answer:
galloping 1, 1, 2, 4 ... lattice steps from it, a few probes when the hint is
close) or cold (from ``start_rate_per_machine`` x machines by steps of
``growth``), then bisects the index gap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from splitjax.provision_layout import Layout
from splitjax.provision_probe import Probe, ProbeOutcome

if TYPE_CHECKING:
  from splitjax.provision import Bisection, RateBracket

_EPS = 1e-9     # slack when mapping a rate to its lattice index (float rounding)


@dataclasses.dataclass(frozen=True)
class RateLattice:
  """Rates ``(1 + tolerance) ** k`` req/s; ``low`` / ``high``: the lowest and
  highest index a search probes (from :class:`~splitjax.provision.Bisection`'s
  ``min_rate`` / ``max_rate``)."""
  tolerance: float
  low: int
  high: int

  @classmethod
  def of(cls, bisection: Bisection) -> RateLattice:
    g = math.log1p(bisection.tolerance)
    return cls(bisection.tolerance, math.ceil(math.log(bisection.min_rate) / g - _EPS),
               math.floor(math.log(bisection.max_rate) / g + _EPS))

  def rate(self, k: int) -> float:
    """Lattice point ``k``, req/s."""
    return (1.0 + self.tolerance) ** k

  def below(self, rate: float) -> int:
    """The highest index whose rate is <= ``rate`` (req/s > 0), clipped to the lattice."""
    k = math.floor(math.log(rate) / math.log1p(self.tolerance) + _EPS)
    return min(max(k, self.low), self.high)

  def steps(self, factor: float) -> int:
    """Lattice steps spanning a rate ``factor`` (>= 1 step)."""
    return max(1, round(math.log(factor) / math.log1p(self.tolerance)))


class LayoutRates:
  """What is known of one layout's feasibility on the lattice, and its probes.

  ``lo``: the highest index probed (or implied) feasible, ``low - 1`` if none
  (and if infeasible at ``low``: no rate is met); ``hi``: the lowest index
  infeasible, ``high + 1`` if none. Monotonicity in rate is assumed: feasible
  at ``k`` implies feasible below ``k``.
  """

  def __init__(self, layout: Layout, probe: Probe, lattice: RateLattice):
    self.layout, self.probe, self.lattice = layout, probe, lattice
    self.lo, self.hi = lattice.low - 1, lattice.high + 1
    self.probes: list[ProbeOutcome] = []

  @property
  def resolved(self) -> bool:
    """The max rate is known to one lattice step (or to the lattice's ends)."""
    return self.hi - self.lo == 1

  def feasible_at(self, k: int) -> bool:
    """Whether the layout meets the SLOs at lattice rate ``k`` (one probe at
    most). Below the lattice: True; above it: False."""
    if k <= self.lo or k < self.lattice.low:
      return True
    if k >= self.hi or k > self.lattice.high:
      return False
    out = self.probe(self.layout, self.lattice.rate(k))
    self.probes.append(out)
    if out.feasible:
      self.lo = k
    else:
      self.hi = k
    return out.feasible

  def resolve(self, hint: int | None = None, growth: float = 2.0,
              start_rate_per_machine: float = 1.0) -> LayoutRates:
    """Probes until :attr:`resolved`. ``hint``: a lattice index near the answer
    (gallop 1, 1, 2, 4 ... steps from it: up while feasible, down while not); if
    something is known already, from the known side unless ``hint`` lies
    strictly inside what is known (then from the hint). None: from the known
    side, or cold from ``start_rate_per_machine`` x machines by steps of
    ``growth`` (rate factor). Then bisects the gap."""
    lat = self.lattice
    if hint is None:
      k = lat.below(start_rate_per_machine * self.layout.machines)
      step = lambda n: lat.steps(growth)
    else:
      k = min(max(hint, lat.low), lat.high)
      step = _gallop
      if (self.lo >= lat.low or self.hi <= lat.high) and self.lo < k < self.hi:
        self._gallop_from(k)
    n = 0
    while not self.resolved and (self.lo < lat.low or self.hi > lat.high):
      if self.lo >= lat.low:                   # feasible somewhere, no ceiling yet
        k, n = min(self.lo + step(n), lat.high), n + 1
      elif self.hi <= lat.high:                # infeasible somewhere, no floor yet
        k, n = max(self.hi - step(n), lat.low), n + 1
      self.feasible_at(k)
    while self.hi - self.lo > 1:
      self.feasible_at((self.lo + self.hi) // 2)
    return self

  def _gallop_from(self, k: int) -> None:
    """Probes ``k``, then 1, 1, 2, 4 ... steps further in the direction its outcome
    points (up if feasible), until the outcome changes or a known bound (or the
    lattice's end) is reached."""
    lat, n = self.lattice, 0
    up = self.feasible_at(k)
    while not self.resolved:
      k = min(self.lo + _gallop(n), lat.high) if up else max(self.hi - _gallop(n), lat.low)
      if not self.lo < k < self.hi or self.feasible_at(k) != up:
        return
      n += 1

  def bracket(self) -> RateBracket:
    """The :class:`~splitjax.provision.RateBracket` of what is known (req/s)."""
    from splitjax.provision import RateBracket
    lat = self.lattice
    lower = lat.rate(self.lo) if self.lo >= lat.low else 0.0
    upper = lat.rate(self.hi) if self.hi <= lat.high else math.inf
    return RateBracket(lower, upper, tuple(self.probes))


def _gallop(n: int) -> int:
  """The ``n``-th step (lattice points) of a gallop from a hint: 1, 1, 2, 4, 8 ...
  (most answers lie within a step or two of their hint: cheaper than 1, 2, 4)."""
  return 2 ** (n - 1) if n else 1
