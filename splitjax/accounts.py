"""Typed records of a run's energy and cost (see :mod:`splitjax.accounting`, which
computes them) and their JSON form, the ``energy`` section of summary.json.

Units: seconds, joules (J), watts (W), US dollars; the JSON reports kWh and Wh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from splitjax.metrics import Percentiles
from splitjax.scheduling.records import Role, WorkKind

KINDS = tuple(WorkKind)                      # column order of every per-phase array
assert KINDS == (WorkKind.PREFILL, WorkKind.DECODE, WorkKind.MIXED)
_KIND_COLUMN = {k: j for j, k in enumerate(KINDS)}
SECONDS_PER_HOUR = 3600.0
JOULES_PER_WH = 3600.0
JOULES_PER_KWH = 3.6e6


@dataclasses.dataclass(frozen=True)
class InstanceRates:
  """What one instance draws in each phase (watts) and costs (dollars per hour)."""
  prefill_w: float
  decode_w: float
  mixed_w: float
  idle_w: float
  usd_per_hour: float

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        raise ValueError(f"{f.name} must be a finite number >= 0, got {v!r}")

  @property
  def busy_w(self) -> tuple[float, float, float]:
    """Watts while running each ``KINDS`` phase."""
    return (self.prefill_w, self.decode_w, self.mixed_w)

  @property
  def max_w(self) -> float:
    """The most the instance draws in any phase, watts."""
    return max(self.busy_w + (self.idle_w,))


@dataclasses.dataclass(frozen=True)
class InstanceAccount:
  """One instance over a run. Seconds, joules and dollars; per-phase dicts have
  every ``WorkKind``."""
  name: str
  home: Role
  rates: InstanceRates
  busy_s: dict[WorkKind, float]
  idle_s: float
  energy_j: dict[WorkKind, float]
  idle_energy_j: float
  cost_usd: float                 # the whole run: machine-hours x price
  idle_cost_usd: float
  kv_sent_bytes: int = 0
  kv_received_bytes: int = 0
  kv_send_exposed_s: float = 0.0  # sum over sent requests of KV landing - first token

  @property
  def total_busy_s(self) -> float:
    return math.fsum(self.busy_s.values())

  @property
  def total_energy_j(self) -> float:
    return math.fsum(self.energy_j.values()) + self.idle_energy_j


@dataclasses.dataclass(frozen=True)
class RequestAccount:
  """One request's share of the run: energy (Wh), cost ($), and the share of
  each phase (fractions of its energy, and of its cost)."""
  request_id: int
  energy_wh: float
  cost_usd: float
  energy_share: dict[WorkKind, float]
  cost_share: dict[WorkKind, float]


@dataclasses.dataclass(frozen=True, eq=False)
class RequestAccounts:
  """Every request that took part in an iteration, as arrays (compact for
  million-request runs). ``energy_j`` / ``cost_usd``: ``[n, 3]`` by ``KINDS``."""
  request_ids: np.ndarray
  energy_j: np.ndarray
  cost_usd: np.ndarray

  def __len__(self) -> int:
    return len(self.request_ids)

  def energy_wh(self) -> np.ndarray:
    """Each request's energy, Wh."""
    return self.energy_j.sum(axis=1) / JOULES_PER_WH

  def total_cost_usd(self) -> np.ndarray:
    """Each request's cost, dollars."""
    return self.cost_usd.sum(axis=1)

  def get(self, request_id: int) -> RequestAccount:
    """One request (KeyError if it never ran)."""
    i = int(np.searchsorted(self.request_ids, request_id))
    if i == len(self.request_ids) or self.request_ids[i] != request_id:
      raise KeyError(f"request {request_id} took part in no iteration")
    e, c = self.energy_j[i], self.cost_usd[i]
    share = lambda v: {k: float(v[j] / v.sum()) if v.sum() > 0 else 0.0
                       for j, k in enumerate(KINDS)}
    return RequestAccount(int(request_id), float(e.sum() / JOULES_PER_WH), float(c.sum()),
                          share(e), share(c))


@dataclasses.dataclass(frozen=True)
class PowerDraw:
  """Cluster power over a run, watts.

  ``over_time_w``: mean draw per ``window_s`` window (the last may be shorter);
  ``peak_w`` / ``peak_at_s``: the instantaneous maximum and when it starts;
  ``peak_window_w``: the highest mean over the finest windows (``fine_window_s``);
  ``rated_w``: every instance at its hungriest phase at once. With a budget,
  ``over_budget_s`` is how long the instantaneous draw exceeded it.
  """
  window_s: float
  over_time_w: list[float]
  fine_window_s: float
  peak_window_w: float
  peak_w: float
  peak_at_s: float
  average_w: float
  rated_w: float
  budget_w: float | None = None
  over_budget_s: float = 0.0

  @property
  def peak_over_budget(self) -> float | None:
    """Peak / budget (> 1: the budget was exceeded), or None without a budget."""
    return self.peak_w / self.budget_w if self.budget_w else None


@dataclasses.dataclass(frozen=True)
class RunAccount:
  """A whole run: instances, requests, power. ``completed`` / ``output_tokens``
  (of completed requests) are the normalizers of the per-1k / per-1M figures."""
  run_s: float
  instances: list[InstanceAccount]
  requests: RequestAccounts
  power: PowerDraw
  completed: int
  output_tokens: int
  unattributed_energy_j: float = 0.0
  unattributed_cost_usd: float = 0.0

  @property
  def energy_j(self) -> float:
    return math.fsum(i.total_energy_j for i in self.instances)

  @property
  def idle_energy_j(self) -> float:
    return math.fsum(i.idle_energy_j for i in self.instances)

  @property
  def cost_usd(self) -> float:
    return math.fsum(i.cost_usd for i in self.instances)

  @property
  def idle_cost_usd(self) -> float:
    return math.fsum(i.idle_cost_usd for i in self.instances)

  def energy_by_phase_j(self) -> dict[str, float]:
    """Joules per phase value (``prefill`` / ``decode`` / ``mixed``) and ``idle``."""
    out = {k.value: math.fsum(i.energy_j[k] for i in self.instances) for k in KINDS}
    out["idle"] = self.idle_energy_j
    return out

  def line(self) -> str:
    """One line for a console report."""
    per_k = self.cost_usd / self.completed * 1e3 if self.completed else math.nan
    idle = self.idle_energy_j / self.energy_j if self.energy_j > 0 else 0.0
    p = self.power
    budget = (f" ({p.peak_over_budget:.0%} of the {p.budget_w / 1e3:.1f} kW budget)"
              if p.budget_w else "")
    return (f"energy {self.energy_j / JOULES_PER_KWH:.1f} kWh ({idle:.0%} idle), cost "
            f"${self.cost_usd:.2f} (${per_k:.2f} per 1k requests); power mean "
            f"{p.average_w / 1e3:.1f} kW, peak {p.peak_w / 1e3:.1f} kW{budget}")

  def to_dict(self) -> dict:
    """The JSON-ready ``energy`` section of summary.json (see :func:`summary_dict`)."""
    return _run_dict(self)


def _per(total_j: float, total_usd: float, n: int, scale: float) -> dict:
  """Energy (kWh) and cost ($) per ``scale`` units when ``n`` were served."""
  if not n:
    return {"energy_kwh": None, "cost_usd": None}
  return {"energy_kwh": total_j / JOULES_PER_KWH / n * scale, "cost_usd": total_usd / n * scale}


def _pct(v: np.ndarray) -> dict:
  p = Percentiles.of_array(v)
  return {"p50": p.p50, "p90": p.p90, "p99": p.p99, "mean": p.mean}


def _requests_dict(a: RunAccount) -> dict:
  r = a.requests
  e = r.energy_j.sum(axis=1)
  shares = r.energy_j / np.where(e > 0, e, 1.0)[:, None]
  return {
      "accounted": len(r),
      "energy_wh": _pct(e / JOULES_PER_WH),
      "cost_usd": _pct(r.total_cost_usd()),
      "energy_share_mean": {k.value: float(shares[:, j].mean()) if len(r) else None
                            for j, k in enumerate(KINDS)},
      "attributed_energy_kwh": float(math.fsum(e)) / JOULES_PER_KWH,
      "attributed_cost_usd": float(math.fsum(r.cost_usd.reshape(-1))),
      "unattributed_energy_kwh": a.unattributed_energy_j / JOULES_PER_KWH,
  }


def _pools_dict(instances: Sequence[InstanceAccount]) -> dict:
  """Instances summed per home pool (by role value)."""
  out = {}
  for role in sorted({i.home for i in instances}, key=lambda r: r.value):
    mine = [i for i in instances if i.home == role]
    add = lambda f: math.fsum(f(i) for i in mine)
    energy = {k.value: add(lambda i: i.energy_j[k]) / JOULES_PER_KWH for k in KINDS}
    energy["idle"] = add(lambda i: i.idle_energy_j) / JOULES_PER_KWH
    out[role.value] = {
        "machines": len(mine),
        "busy_s": {k.value: add(lambda i: i.busy_s[k]) for k in KINDS},
        "idle_s": add(lambda i: i.idle_s),
        "energy_kwh": energy,
        "cost_usd": add(lambda i: i.cost_usd),
        "kv_sent_bytes": sum(i.kv_sent_bytes for i in mine),
        "kv_received_bytes": sum(i.kv_received_bytes for i in mine),
        "kv_send_exposed_s": add(lambda i: i.kv_send_exposed_s),
    }
  return out


def _run_dict(a: RunAccount) -> dict:
  energy, cost = a.energy_j, a.cost_usd
  p = a.power
  return {
      "run_s": a.run_s,
      "energy_kwh": energy / JOULES_PER_KWH,
      "energy_kwh_by_phase": {k: j / JOULES_PER_KWH for k, j in a.energy_by_phase_j().items()},
      "cost_usd": cost,
      "idle_cost_usd": a.idle_cost_usd,
      "per_1k_requests": _per(energy, cost, a.completed, 1e3),
      "per_1m_output_tokens": _per(energy, cost, a.output_tokens, 1e6),
      "requests": _requests_dict(a),
      "power": {"window_s": p.window_s, "over_time_w": p.over_time_w,
                "fine_window_s": p.fine_window_s, "peak_window_w": p.peak_window_w,
                "peak_w": p.peak_w, "peak_at_s": p.peak_at_s, "average_w": p.average_w,
                "rated_w": p.rated_w, "budget_w": p.budget_w,
                "peak_over_budget": p.peak_over_budget, "over_budget_s": p.over_budget_s},
      "pools": _pools_dict(a.instances),
  }
