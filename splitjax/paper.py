"""Reproducing the Splitwise paper's headline claims by simulation (no jax).

The six designs of the paper (:class:`PaperDesign`) are searched with
``splitjax.provision`` on both Azure traces at the paper's budgets
(:func:`paper_budget`: iso-power 40 DGX-H100 = 70 DGX-A100 = 224 kW of GPU power,
iso-cost 40 DGX-H100 = 1520 $/h ~ 86 DGX-A100). Each search is one
:class:`SearchSpec` (trace, design, budget, modeling :class:`Variant`); its
outcome is a :class:`SearchOutcome`. The claims (:class:`ClaimKey`) are computed
from outcomes only (:func:`compute_claims`), so they are testable on hand-made
outcomes; :func:`run_specs` runs searches in parallel processes (each search
inline, its probes cached under ``cache_dir``). ``scripts/reproduce_paper.py``
drives it, :func:`render_report` writes the markdown and ``splitjax.paper_plots``
the figures.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import math
import time
from typing import Callable, Iterable, Mapping

from splitjax.provision import (Bisection, Budget, BudgetKind, Design, Layout, Objective,
                                SearchSpace, SimProbe, machine_price, search)
from splitjax.provision_layout import ProbeSettings
from splitjax.sim.hardware import get_hardware

H100, A100, H100_CAP = "dgx-h100", "dgx-a100", "dgx-h100-pcap"
PAPER_H100_MACHINES = 40        # both budgets are "the cost / power of 40 DGX-H100"


class Trace(enum.Enum):
  CODE = "code"
  CONV = "conv"


class PaperDesign(enum.Enum):
  """(label, prompt kind, token kind) or (label, co-located kind, None)."""
  BASELINE_A100 = ("Baseline-A100", A100, None)
  BASELINE_H100 = ("Baseline-H100", H100, None)
  SPLITWISE_AA = ("Splitwise-AA", A100, A100)
  SPLITWISE_HH = ("Splitwise-HH", H100, H100)
  SPLITWISE_HA = ("Splitwise-HA", H100, A100)
  SPLITWISE_HHCAP = ("Splitwise-HHcap", H100, H100_CAP)

  @property
  def label(self) -> str:
    return self.value[0]

  @property
  def split(self) -> bool:
    return self.value[2] is not None

  def space(self, step: int, max_machines: int = 60, refine_step: int = 0) -> SearchSpace:
    """The provisioning space of this design (grid ``step`` machines)."""
    _, first, second = self.value
    if not self.split:
      return SearchSpace(colocated_kinds=(first,), step=step, max_machines=max_machines)
    return SearchSpace(prompt_kinds=(first,), token_kinds=(second,), step=step,
                       max_machines=max_machines, refine_step=refine_step)


class Variant(enum.Enum):
  """Modeling choices; the non-OURS ones switch one of ours to the paper simulator's."""
  OURS = "ours"                   # GQA-sized KV, layer-wise transfer for long prompts
  SERIAL_TRANSFER = "serial"      # every KV cache sent after its prefill (one copy)
  NO_GQA_KV = "no_gqa_kv"         # KV sized with num_kv_heads = num_heads (8x for Llama2-70B)

  @property
  def description(self) -> str:
    return {Variant.OURS: "our model",
            Variant.SERIAL_TRANSFER: "KV sent serially after each prefill",
            Variant.NO_GQA_KV: "KV sized without GQA (8x larger)"}[self]


def paper_budget(kind: BudgetKind, scale: float = 1.0) -> Budget:
  """The paper's budget of ``scale`` x 40 DGX-H100: GPU power (W) or $/h."""
  price = machine_price(get_hardware(H100)).times(PAPER_H100_MACHINES)
  if kind == BudgetKind.ISO_POWER:
    return Budget(kind, power_w=price.power_w * scale)
  return Budget(kind, cost_per_hour_usd=price.cost_per_hour_usd * scale)


@dataclasses.dataclass(frozen=True)
class SearchSpec:
  """One provisioning search: ``budget`` is iso-power / iso-cost (max rate) or
  iso-throughput (least cost or power at ``budget.rate`` req/s)."""
  trace: Trace
  design: PaperDesign
  budget: Budget
  variant: Variant = Variant.OURS

  def describe(self) -> str:
    return (f"{self.trace.value} {self.design.label} {self.budget.describe()}"
            + ("" if self.variant == Variant.OURS else f" [{self.variant.value}]"))


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """How hard to search: ``requests`` per probe, grid ``step`` (machines),
  ``tolerance`` of the max-rate bisection (relative), ``refine_step`` of the
  iso-throughput searches, ``budget_scale`` x the paper's budgets (and of the
  70 req/s of the cost-optimal claim), ``workers`` processes (0: one per CPU)."""
  requests: int = 2000
  step: int = 5
  tolerance: float = 0.05
  refine_step: int = 1
  budget_scale: float = 1.0
  traces: tuple[Trace, ...] = (Trace.CODE, Trace.CONV)
  workers: int = 0
  cache_dir: str = ""
  deviation: float = 0.2          # |ours / paper - 1| above this triggers the reruns
  seed: int = 0

  @property
  def max_machines(self) -> int:
    """Per pool, iso-throughput searches (1.5 x the budget's H100 count)."""
    return max(2 * self.step, math.ceil(1.5 * PAPER_H100_MACHINES * self.budget_scale))


QUICK = RunSettings(requests=1000, step=10, tolerance=0.1, refine_step=0)


def base_sim(trace: Trace, design: PaperDesign, variant: Variant = Variant.OURS):
  """The SimConfig a design's probes start from (pools are replaced per layout)."""
  from splitjax.config import TransferMode, from_config_dict
  from splitjax.sim.sim_config import PoolConfig, SimConfig, design_config_dict
  _, first, second = design.value
  if design.split:
    cd = design_config_dict(prompt=PoolConfig(1, first), token=PoolConfig(1, second))
  else:
    cd = design_config_dict(colocated=PoolConfig(1, first))
  cd.workload.trace = trace.value
  if variant == Variant.SERIAL_TRANSFER:
    cd.cluster.transfer = TransferMode.SERIALIZED.value
  elif variant == Variant.NO_GQA_KV:
    m = cd.model
    head_dim = m.get("head_dim") or m.hidden_size // m.num_heads
    extra = 2 * m.hidden_size * head_dim * (m.num_heads - m.num_kv_heads)
    # Same parameter count (weights memory) to within 3 x hidden_size per layer: the
    # larger K/V projections are paid for by a narrower MLP, which the profile ignores.
    m.mlp_hidden -= round(extra / (3 * m.hidden_size))
    m.num_kv_heads = m.num_heads
  return from_config_dict(SimConfig, cd)


@dataclasses.dataclass(frozen=True)
class LayoutPoint:
  """One evaluated layout: ``max_rate`` req/s (AT_RATE rows: the probed rate
  if met, else 0), ``cost_per_hour_usd`` $/h, ``power_w`` W (GPU basis)."""
  layout: Layout
  max_rate: float
  cost_per_hour_usd: float
  power_w: float
  bisected: bool = True

  def to_dict(self) -> dict:
    return {"layout": self.layout.to_dict(), "label": self.layout.label,
            "max_rate": self.max_rate, "cost_per_hour_usd": self.cost_per_hour_usd,
            "power_w": self.power_w, "bisected": self.bisected}


@dataclasses.dataclass(frozen=True)
class SearchOutcome:
  """A finished search: its winner (None: nothing met the SLOs), every layout."""
  spec: SearchSpec
  best: LayoutPoint | None
  rows: tuple[LayoutPoint, ...] = ()
  probes: int = 0
  seconds: float = 0.0

  def to_dict(self) -> dict:
    s = self.spec
    return {"trace": s.trace.value, "design": s.design.label, "variant": s.variant.value,
            "budget": s.budget.describe(), "best": self.best.to_dict() if self.best else None,
            "rows": [r.to_dict() for r in self.rows], "probes": self.probes,
            "seconds": self.seconds}


def run_search(spec: SearchSpec, settings: RunSettings) -> SearchOutcome:
  """One provisioning search, inline (runs in a worker process)."""
  from splitjax.provision import EvalMode
  t0 = time.perf_counter()
  probe = SimProbe.create(base_sim(spec.trace, spec.design, spec.variant),
                          ProbeSettings(requests=settings.requests, seed=settings.seed))
  thr = spec.budget.kind == BudgetKind.ISO_THROUGHPUT
  space = spec.design.space(settings.step, settings.max_machines,
                            settings.refine_step if thr else 0)
  design = Design.SPLIT if spec.design.split else Design.COLOCATED
  result = search(design, space, spec.budget, probe,
                  bisection=Bisection(tolerance=settings.tolerance), workers=1,
                  cache_dir=settings.cache_dir or None)
  point = lambda r: LayoutPoint(r.layout, r.max_rate, r.price.cost_per_hour_usd,
                                r.price.power_w, r.mode == EvalMode.MAX_RATE)
  return SearchOutcome(spec, point(result.best) if result.best else None,
                       tuple(point(r) for r in result.rows), result.probes,
                       time.perf_counter() - t0)


def run_specs(specs: Iterable[SearchSpec], settings: RunSettings,
              progress: Callable[[str], None] | None = None) -> dict[SearchSpec, SearchOutcome]:
  """Every search, ``settings.workers`` at a time in processes (1: inline)."""
  import os
  specs = list(dict.fromkeys(specs))
  workers = settings.workers or os.cpu_count() or 1
  out: dict[SearchSpec, SearchOutcome] = {}

  def done(o: SearchOutcome) -> None:
    out[o.spec] = o
    if progress:
      win = f"{o.best.layout.label}: {o.best.max_rate:.1f} req/s" if o.best else "no layout"
      progress(f"[{len(out)}/{len(specs)}] {o.spec.describe()} -> {win} "
               f"({o.probes} probes, {o.seconds:.1f} s)")
  if workers <= 1 or len(specs) <= 1:
    for s in specs:
      done(run_search(s, settings))
    return out
  with cf.ProcessPoolExecutor(min(workers, len(specs))) as pool:
    for f in cf.as_completed([pool.submit(run_search, s, settings) for s in specs]):
      done(f.result())
  return out


# ---------------------------------------------------------------- claims


class ClaimKey(enum.Enum):
  """The paper's headline claims, each with its published value (None: the
  paper gives no single number) and the unit of the value we compute."""
  THROUGHPUT_AT_LOWER_COST = ("1.4x throughput at 20% lower cost", 1.4, "x throughput")
  SAME_COST_AND_POWER = ("2.35x throughput at the same cost and power", 2.35, "x throughput")
  HHCAP_LOWER_POWER = ("HHcap matches Baseline-H100 throughput at 25% lower power", 0.75,
                       "x power")
  CODE_COST_OPTIMAL = ("the cost-optimal HH split at 70 req/s on the code trace", None, "$/h")

  @property
  def text(self) -> str:
    return self.value[0]

  @property
  def paper_value(self) -> float | None:
    return self.value[1]

  @property
  def unit(self) -> str:
    return self.value[2]


COST_CUT_TOLERANCE = 0.05     # "20% lower cost": designs costing <= (0.8 + this) x Baseline-H100
CODE_COST_OPTIMAL_RATE = 70.0  # req/s (x RunSettings.budget_scale)


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim: ``our_value`` (None: not computed) from ``basis`` (what was
  compared, per trace); ``detail``: the numbers behind it."""
  key: ClaimKey
  our_value: float | None
  basis: str
  detail: str = ""
  our_label: str = ""        # a layout, for claims whose value is a cluster

  @property
  def ratio(self) -> float | None:
    """ours / paper (None: either missing)."""
    p = self.key.paper_value
    return self.our_value / p if p and self.our_value is not None else None

  def deviates(self, tolerance: float) -> bool:
    return self.ratio is not None and abs(self.ratio - 1.0) > tolerance

  def to_dict(self) -> dict:
    return {"claim": self.key.text, "paper_value": self.key.paper_value,
            "our_value": self.our_value, "unit": self.key.unit, "ratio": self.ratio,
            "basis": self.basis, "detail": self.detail, "our_layout": self.our_label}


Outcomes = Mapping[SearchSpec, SearchOutcome]


def budget_spec(trace: Trace, design: PaperDesign, kind: BudgetKind, settings: RunSettings,
                variant: Variant = Variant.OURS) -> SearchSpec:
  return SearchSpec(trace, design, paper_budget(kind, settings.budget_scale), variant)


def hhcap_spec(trace: Trace, rate: float, variant: Variant = Variant.OURS) -> SearchSpec:
  """Least-power HHcap cluster serving ``rate`` req/s (Baseline-H100's max)."""
  return SearchSpec(trace, PaperDesign.SPLITWISE_HHCAP,
                    Budget(BudgetKind.ISO_THROUGHPUT, rate=rate, minimize=Objective.POWER),
                    variant)


def code_cost_spec(settings: RunSettings, variant: Variant = Variant.OURS) -> SearchSpec:
  return SearchSpec(Trace.CODE, PaperDesign.SPLITWISE_HH,
                    Budget(BudgetKind.ISO_THROUGHPUT,
                           rate=CODE_COST_OPTIMAL_RATE * settings.budget_scale), variant)


def _best(outcomes: Outcomes, spec: SearchSpec) -> LayoutPoint | None:
  o = outcomes.get(spec)
  return o.best if o else None


def _vs_baseline(outcomes: Outcomes, settings: RunSettings, variant: Variant,
                 baseline: PaperDesign, designs: Iterable[PaperDesign],
                 cost_limit: float) -> tuple[float | None, str, str]:
  """Highest iso-power throughput ratio of ``designs`` over ``baseline``
  among those costing <= ``cost_limit`` x the baseline: (value, winner, detail)."""
  best, where, parts = None, "", []
  for trace in settings.traces:
    base = _best(outcomes, budget_spec(trace, baseline, BudgetKind.ISO_POWER, settings, variant))
    if not base or base.max_rate <= 0:
      continue
    for d in designs:
      p = _best(outcomes, budget_spec(trace, d, BudgetKind.ISO_POWER, settings, variant))
      if not p:
        continue
      thr, cost = p.max_rate / base.max_rate, p.cost_per_hour_usd / base.cost_per_hour_usd
      parts.append(f"{trace.value} {d.label} ({p.layout.label}): {thr:.2f}x at {cost:.2f}x cost")
      if cost <= cost_limit and (best is None or thr > best):
        best, where = thr, f"{trace.value} {d.label}"
  return best, where, "; ".join(parts)


def compute_claims(outcomes: Outcomes, settings: RunSettings,
                   variant: Variant = Variant.OURS) -> tuple[Claim, ...]:
  """Every claim from finished searches (a missing search leaves its value None)."""
  splits = [d for d in PaperDesign if d.split]
  v1, w1, d1 = _vs_baseline(outcomes, settings, variant, PaperDesign.BASELINE_H100, splits,
                            0.8 + COST_CUT_TOLERANCE)
  v2, w2, d2 = _vs_baseline(outcomes, settings, variant, PaperDesign.BASELINE_A100,
                            [PaperDesign.SPLITWISE_AA], 1.0 + 1e-9)
  claims = [
      Claim(ClaimKey.THROUGHPUT_AT_LOWER_COST, v1,
            f"iso-power: best Splitwise design costing <= {0.8 + COST_CUT_TOLERANCE:.2f}x "
            f"Baseline-H100, max rate / Baseline-H100's ({w1 or 'none'})", d1),
      Claim(ClaimKey.SAME_COST_AND_POWER, v2,
            f"iso-power: Splitwise-AA / Baseline-A100 max rate, same machines so same "
            f"cost and power ({w2 or 'none'})", d2),
      _hhcap_claim(outcomes, settings, variant), _code_claim(outcomes, settings, variant)]
  return tuple(claims)


def _hhcap_claim(outcomes: Outcomes, settings: RunSettings, variant: Variant) -> Claim:
  best, parts = None, []
  for trace in settings.traces:
    base = _best(outcomes, budget_spec(trace, PaperDesign.BASELINE_H100, BudgetKind.ISO_POWER,
                                       settings, variant))
    cap = _best(outcomes, hhcap_spec(trace, base.max_rate, variant)) if base else None
    if not (base and cap):
      continue
    ratio = cap.power_w / base.power_w
    parts.append(f"{trace.value}: {cap.layout.label} serves {base.max_rate:.1f} req/s at "
                 f"{cap.power_w / 1e3:.0f} kW vs {base.power_w / 1e3:.0f} kW ({ratio:.2f}x)")
    best = ratio if best is None else min(best, ratio)
  return Claim(ClaimKey.HHCAP_LOWER_POWER, best,
               "least-power HHcap layout at Baseline-H100's iso-power max rate, power / "
               "Baseline-H100's (lowest over traces)", "; ".join(parts))


def _code_claim(outcomes: Outcomes, settings: RunSettings, variant: Variant) -> Claim:
  spec = code_cost_spec(settings, variant)
  p = _best(outcomes, spec)
  basis = f"least-cost HH layout meeting {spec.budget.rate:g} req/s (code trace)"
  if not p:
    return Claim(ClaimKey.CODE_COST_OPTIMAL, None, basis, "not run" if spec not in outcomes
                 else "no layout met the rate")
  return Claim(ClaimKey.CODE_COST_OPTIMAL, p.cost_per_hour_usd, basis,
               f"{p.layout.label}: {p.cost_per_hour_usd:.0f} $/h, {p.power_w / 1e3:.0f} kW, "
               f"max {p.max_rate:.1f} req/s", p.layout.label)


def claim_specs(key: ClaimKey, settings: RunSettings, variant: Variant) -> list[SearchSpec]:
  """The budget searches a claim needs (HHcap's rate-dependent search aside)."""
  designs = {ClaimKey.THROUGHPUT_AT_LOWER_COST: list(PaperDesign),
             ClaimKey.SAME_COST_AND_POWER: [PaperDesign.BASELINE_A100, PaperDesign.SPLITWISE_AA],
             ClaimKey.HHCAP_LOWER_POWER: [PaperDesign.BASELINE_H100]}.get(key, [])
  out = [budget_spec(t, d, BudgetKind.ISO_POWER, settings, variant)
         for t in settings.traces for d in designs]
  if key == ClaimKey.CODE_COST_OPTIMAL and Trace.CODE in settings.traces:
    out.append(code_cost_spec(settings, variant))
  return out


def hhcap_specs(outcomes: Outcomes, settings: RunSettings,
                variant: Variant = Variant.OURS) -> list[SearchSpec]:
  """The HHcap iso-throughput searches, once Baseline-H100's max rates are known."""
  out = []
  for trace in settings.traces:
    base = _best(outcomes, budget_spec(trace, PaperDesign.BASELINE_H100, BudgetKind.ISO_POWER,
                                       settings, variant))
    if base and base.max_rate > 0:
      out.append(hhcap_spec(trace, base.max_rate, variant))
  return out
