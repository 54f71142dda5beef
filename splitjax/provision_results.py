"""What a provisioning search (``splitjax.provision``) returns (no jax): a
layout's :class:`RateBracket` (req/s), a :class:`LayoutResult` per evaluated
layout and the :class:`SearchResult`."""

from __future__ import annotations

import dataclasses
import enum
import math

from splitjax.config import to_plain_dict
from splitjax.provision_layout import Budget, Design, Layout, Price
from splitjax.provision_probe import ProbeOutcome


class EvalMode(enum.Enum):
  MAX_RATE = "max_rate"   # bracketed and bisected
  AT_RATE = "at_rate"     # one probe at a required rate
  BOUNDS = "bounds"       # compared with a better layout only (its bracket may be wide)


@dataclasses.dataclass(frozen=True)
class RateBracket:
  """``lower``: highest rate probed feasible (0: none); ``upper``: lowest probed
  infeasible (inf: none); req/s."""
  lower: float
  upper: float
  probes: tuple[ProbeOutcome, ...]


@dataclasses.dataclass(frozen=True)
class LayoutResult:
  """One evaluated layout: its price and rate bracket (``mode`` says whether
  the bracket was bisected or is one probe at a required rate)."""
  layout: Layout
  price: Price
  mode: EvalMode
  rates: RateBracket

  @property
  def max_rate(self) -> float:
    """Highest rate known to meet the SLOs, req/s (0: none)."""
    return self.rates.lower

  @property
  def feasible(self) -> bool:
    return self.rates.lower > 0

  @property
  def rate_per_cost(self) -> float:
    """req/s per $/h (NaN for an unpriced layout)."""
    cost = self.price.cost_per_hour_usd
    return self.max_rate / cost if cost else math.nan

  @property
  def rate_per_kw(self) -> float:
    """req/s per kW (NaN for a layout without power)."""
    return self.max_rate / (self.price.power_w / 1e3) if self.price.power_w else math.nan

  def to_dict(self) -> dict:
    finite = lambda x: x if math.isfinite(x) else None
    return {"layout": self.layout.to_dict(), "label": self.layout.label,
            "cost_per_hour_usd": self.price.cost_per_hour_usd, "power_w": self.price.power_w,
            "mode": self.mode.value, "max_rate": self.max_rate,
            "infeasible_rate": finite(self.rates.upper),
            "rate_per_cost": finite(self.rate_per_cost), "rate_per_kw": finite(self.rate_per_kw),
            "probes": [p.to_dict() for p in self.rates.probes]}


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """``rows``: every evaluated layout (sorted by kinds, then counts); ``best``:
  the winner (None: no layout met the SLOs, at the required rate for
  ISO_THROUGHPUT)."""
  design: Design
  budget: Budget
  rows: tuple[LayoutResult, ...]
  best: LayoutResult | None

  @property
  def probes(self) -> int:
    return sum(len(r.rates.probes) for r in self.rows)

  def to_dict(self) -> dict:
    return {"design": self.design.value, "budget": to_plain_dict(self.budget),
            "best": self.best.to_dict() if self.best else None,
            "probes": self.probes, "rows": [r.to_dict() for r in self.rows]}
