"""What the provisioning search (``splitjax.provision``) chooses from (no jax):
a :class:`Layout` and its :class:`Price`, a :class:`Budget`, the
:class:`SearchSpace` of kinds and counts and the candidate sets it spans
(:func:`budget_layouts`, :func:`budget_line`). How one probe runs and is
cached: ``splitjax.provision_probe``.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from typing import Iterable, Mapping

from splitjax.sim.hardware import Hardware, HardwareError, get_hardware

_EPS = 1e-9      # slack (machines) when counting what fits a budget (float rounding)


class ProvisionError(ValueError):
  """A provisioning input cannot be searched (budget, space, layout, config)."""


class Design(enum.Enum):
  SPLIT = "split"            # prompt pool + token pool
  COLOCATED = "colocated"    # one pool running both phases


@dataclasses.dataclass(frozen=True)
class Price:
  """What machines cost to run: ``power_w`` (W, GPU power under any cap) and
  ``cost_per_hour_usd`` ($/h)."""
  power_w: float = 0.0
  cost_per_hour_usd: float = 0.0

  def __add__(self, other: Price) -> Price:
    return Price(self.power_w + other.power_w, self.cost_per_hour_usd + other.cost_per_hour_usd)

  def times(self, n: int) -> Price:
    return Price(n * self.power_w, n * self.cost_per_hour_usd)


def machine_price(hw: Hardware) -> Price:
  """One machine on the paper's iso-power basis: devices x device W x cap fraction
  (DGX-A100 3200 W, DGX-H100 5600 W, 70%-capped DGX-H100 3920 W), catalog $/h."""
  return Price(hw.devices_per_machine * hw.device_power_w * hw.power_cap_fraction,
               hw.cost_per_hour_usd)


def prices(kinds: Iterable[str]) -> dict[str, Price]:
  """Price of each catalog machine kind; ProvisionError naming an unknown one."""
  out = {}
  for kind in kinds:
    try:
      out[kind] = machine_price(get_hardware(kind))
    except HardwareError as e:
      raise ProvisionError(str(e)) from None
  return out


@dataclasses.dataclass(frozen=True)
class Pool:
  machines: int
  kind: str    # catalog machine kind


@dataclasses.dataclass(frozen=True)
class Layout:
  """A cluster: ``prompt`` + ``token`` pools (SPLIT) or a ``colocated`` pool."""
  prompt: Pool | None = None
  token: Pool | None = None
  colocated: Pool | None = None

  def __post_init__(self):
    split = self.prompt is not None and self.token is not None
    if split == (self.colocated is not None) or (not split and (self.prompt or self.token)):
      raise ProvisionError("a layout has prompt and token pools, or a colocated pool")
    if any(p.machines < 1 for p in self.pools):
      raise ProvisionError(f"every pool needs >= 1 machine, got {self.label}")

  @property
  def design(self) -> Design:
    return Design.COLOCATED if self.colocated else Design.SPLIT

  @property
  def pools(self) -> tuple[Pool, ...]:
    return (self.colocated,) if self.colocated else (self.prompt, self.token)

  @property
  def machines(self) -> int:
    return sum(p.machines for p in self.pools)

  @property
  def label(self) -> str:
    return " + ".join(f"{p.machines} {p.kind}" for p in self.pools)

  def price(self, price: Mapping[str, Price]) -> Price:
    """Sum of the machines' prices (W, $/h)."""
    return sum((price[p.kind].times(p.machines) for p in self.pools), Price())

  def dominated_by(self, other: Layout) -> bool:
    """Same kinds pool by pool, and no more machines in any pool than ``other``."""
    return (self.design == other.design and
            all(a.kind == b.kind and a.machines <= b.machines
                for a, b in zip(self.pools, other.pools)))

  def to_dict(self) -> dict:
    return {name: dataclasses.asdict(p) for name, p in
            (("prompt", self.prompt), ("token", self.token), ("colocated", self.colocated)) if p}


class BudgetKind(enum.Enum):
  ISO_COST = "iso_cost"              # maximize rate at cost <= Budget.cost_per_hour_usd
  ISO_POWER = "iso_power"            # maximize rate at power <= Budget.power_w
  ISO_THROUGHPUT = "iso_throughput"  # minimize cost or power at rate >= Budget.rate


class Objective(enum.Enum):
  COST = "cost"      # $/h
  POWER = "power"    # W


@dataclasses.dataclass(frozen=True)
class Budget:
  """ISO_POWER: ``power_w`` (W, :func:`machine_price` basis); ISO_COST:
  ``cost_per_hour_usd`` ($/h); ISO_THROUGHPUT: ``rate`` (req/s) at the least
  ``minimize`` (cost or power)."""
  kind: BudgetKind = BudgetKind.ISO_POWER
  power_w: float = 0.0
  cost_per_hour_usd: float = 0.0
  rate: float = 0.0
  minimize: Objective = Objective.COST

  def __post_init__(self):
    need = {BudgetKind.ISO_POWER: "power_w", BudgetKind.ISO_COST: "cost_per_hour_usd",
            BudgetKind.ISO_THROUGHPUT: "rate"}[self.kind]
    if not 0 < getattr(self, need) < math.inf:
      raise ProvisionError(f"a {self.kind.value} budget needs budget.{need} > 0, "
                           f"got {getattr(self, need)}")

  @property
  def limit(self) -> float:
    """W (ISO_POWER) or $/h (ISO_COST); inf for ISO_THROUGHPUT."""
    return {BudgetKind.ISO_POWER: self.power_w, BudgetKind.ISO_COST: self.cost_per_hour_usd,
            BudgetKind.ISO_THROUGHPUT: math.inf}[self.kind]

  @property
  def in_watts(self) -> bool:
    """The budgeted (or minimized) quantity is power (W), not cost ($/h)."""
    return (self.kind == BudgetKind.ISO_POWER or
            self.kind == BudgetKind.ISO_THROUGHPUT and self.minimize == Objective.POWER)

  @property
  def unit(self) -> str:
    return "W" if self.in_watts else "$/h"

  def measure(self, price: Price) -> float:
    """The budgeted (or minimized) quantity of ``price``: W or $/h."""
    return price.power_w if self.in_watts else price.cost_per_hour_usd

  def describe(self) -> str:
    return {BudgetKind.ISO_POWER: f"iso-power {self.power_w / 1e3:g} kW",
            BudgetKind.ISO_COST: f"iso-cost {self.cost_per_hour_usd:g} $/h",
            BudgetKind.ISO_THROUGHPUT:
                f"iso-throughput {self.rate:g} req/s, least {self.minimize.value}"}[self.kind]


class Strategy(enum.Enum):
  """How an ISO_POWER / ISO_COST search covers the layouts of its budget."""
  SWEEP = "sweep"    # every layout's max rate bisected (no shape assumed)
  CLIMB = "climb"    # per kind pair, climb the unimodal max rate (provision_climb)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """Machine kinds per pool and the grid of counts (machines)."""
  prompt_kinds: tuple[str, ...] = ("dgx-h100",)
  token_kinds: tuple[str, ...] = ("dgx-h100",)
  colocated_kinds: tuple[str, ...] = ("dgx-h100",)
  step: int = 5             # grid counts are step, 2 step, ...
  max_machines: int = 60    # per pool, ISO_THROUGHPUT (budgets bound the others)
  # > 0: a second pass at this step: budgets, prompt counts within one grid step
  # of the best; ISO_THROUGHPUT, the whole finer grid, bounded by the grid's winner.
  refine_step: int = 0
  strategy: Strategy = Strategy.SWEEP    # budgets: sweep or climb each kind pair's line
  # ISO_THROUGHPUT: the finer pass walks only prompt counts within one grid step
  # of each kind pair's coarse winner (pairs without one: the whole grid).
  local_refine: bool = False

  def __post_init__(self):
    if self.step < 1 or self.max_machines < 1 or self.refine_step < 0:
      raise ProvisionError("space.step and space.max_machines must be >= 1, "
                           "space.refine_step >= 0")

  def kinds(self, design: Design) -> tuple[str, ...]:
    kinds = ((self.colocated_kinds,) if design == Design.COLOCATED
             else (self.prompt_kinds, self.token_kinds))
    if not all(kinds):
      raise ProvisionError(f"space: no machine kinds for the {design.value} design")
    return tuple(dict.fromkeys(itertools.chain(*kinds)))


def _count(room: float, unit: float) -> int:
  """Machines of price ``unit`` that fit in ``room`` (same units), >= 0."""
  return max(0, math.floor(room / unit + _EPS))


def fill_up(budget: Budget, price: Mapping[str, Price], prompt: Pool,
            token_kind: str) -> Layout | None:
  """``prompt``, then as many ``token_kind`` machines as fit, then the leftover
  spent on more prompt machines: a layout no machine can be added to (None if
  no token machine fits)."""
  wp, wt = budget.measure(price[prompt.kind]), budget.measure(price[token_kind])
  tokens = _count(budget.limit - prompt.machines * wp, wt)
  if tokens < 1:
    return None
  more = _count(budget.limit - prompt.machines * wp - tokens * wt, wp)
  return Layout(Pool(prompt.machines + more, prompt.kind), Pool(tokens, token_kind))


def budget_line(budget: Budget, price: Mapping[str, Price], prompt_kind: str,
                token_kind: str, step: int, around: int = 0, within: int = 0) -> list[Layout]:
  """The layouts of one kind pair using an ISO_POWER / ISO_COST budget maximally
  (:func:`fill_up`) with prompt counts on a grid of ``step``, by prompt count;
  ``within`` > 0: only counts less than ``within`` away from ``around``."""
  wp, wt = budget.measure(price[prompt_kind]), budget.measure(price[token_kind])
  top = _count(budget.limit - wt, wp)
  counts = range(step, top + 1, step)
  if within:
    counts = [n for n in range(around - within + step, around + within, step) if 1 <= n <= top]
  out = [lay for p in counts if (lay := fill_up(budget, price, Pool(p, prompt_kind), token_kind))]
  return sorted(dict.fromkeys(out), key=lambda lay: lay.prompt.machines)


def budget_layouts(design: Design, space: SearchSpace, budget: Budget,
                   price: Mapping[str, Price]) -> list[Layout]:
  """Layouts using an ISO_POWER / ISO_COST budget maximally: per kind (pair),
  the co-located count that fits, or prompt counts on the grid filled up by
  :func:`fill_up`. ProvisionError if none fits."""
  if budget.kind == BudgetKind.ISO_THROUGHPUT:
    raise ProvisionError("budget_layouts needs an iso_power or iso_cost budget")
  units = {k: budget.measure(price[k]) for k in space.kinds(design)}
  free = [k for k, u in units.items() if u <= 0]
  if free:
    raise ProvisionError(f"machine kind(s) {', '.join(free)} have no "
                         f"{'power' if budget.in_watts else 'cost'}: "
                         f"a {budget.kind.value} budget cannot bound them")
  out: list[Layout] = []
  if design == Design.COLOCATED:
    out = [Layout(colocated=Pool(_count(budget.limit, units[k]), k))
           for k in space.colocated_kinds if _count(budget.limit, units[k]) >= 1]
    smallest = min(units.values())
  else:
    for pk, tk in itertools.product(space.prompt_kinds, space.token_kinds):
      out += budget_line(budget, price, pk, tk, space.step)
    smallest = min(space.step * units[pk] + units[tk]
                   for pk, tk in itertools.product(space.prompt_kinds, space.token_kinds))
  if not out:
    raise ProvisionError(f"the budget ({budget.describe()}) is too small for any "
                         f"{design.value} layout on a grid of step {space.step}: the smallest "
                         f"needs {smallest:g} {budget.unit}")
  return list(dict.fromkeys(out))
