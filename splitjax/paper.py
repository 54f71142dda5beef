"""Reproducing the Splitwise paper's headline claims by simulation (no jax).

The six designs of the paper (:class:`PaperDesign`, plus Splitwise-any: every
prompt / token machine kind pair, the search beyond the paper) are searched with
``splitjax.provision`` on both Azure traces at the paper's budgets
(:func:`paper_budget`: iso-power 40 DGX-H100 = 70 DGX-A100 = 224 kW of GPU power,
iso-cost 40 DGX-H100 = 1520 $/h ~ 86 DGX-A100). Each search is one
:class:`SearchSpec` (trace, design, budget, modeling :class:`Variant`, scheduler
:class:`Tuning`); its
outcome is a :class:`SearchOutcome`; ``splitjax.paper_run`` runs searches in parallel
processes (each search inline, its probes cached under ``cache_dir``), each as
soon as the searches it takes hints from are done. The claims are
``splitjax.paper_claims``; the figures and the markdown report
``splitjax.paper_plots``; ``scripts/reproduce_paper.py`` drives them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Mapping

from splitjax.provision import (Budget, BudgetKind, Layout, Objective, SearchSpace, Strategy,
                                machine_price)
from splitjax.provision_probe import ProbeSettings
from splitjax.sim.hardware import get_hardware

H100, A100, H100_CAP = "dgx-h100", "dgx-a100", "dgx-h100-pcap"
PAPER_H100_MACHINES = 40        # both budgets are "the cost / power of 40 DGX-H100"


class Trace(enum.Enum):
  CODE = "code"
  CONV = "conv"


class PaperDesign(enum.Enum):
  """(label, prompt kinds, token kinds) or (label, co-located kinds, None). The
  paper's six, and SPLITWISE_ANY: every prompt / token kind pair at once
  (refined around its winner), the search beyond the paper."""
  BASELINE_A100 = ("Baseline-A100", (A100,), None)
  BASELINE_H100 = ("Baseline-H100", (H100,), None)
  SPLITWISE_AA = ("Splitwise-AA", (A100,), (A100,))
  SPLITWISE_HH = ("Splitwise-HH", (H100,), (H100,))
  SPLITWISE_HA = ("Splitwise-HA", (H100,), (A100,))
  SPLITWISE_HHCAP = ("Splitwise-HHcap", (H100,), (H100_CAP,))
  SPLITWISE_ANY = ("Splitwise-any", (H100, A100), (H100, A100, H100_CAP))

  @property
  def label(self) -> str:
    return self.value[0]

  @property
  def split(self) -> bool:
    return self.value[2] is not None

  @property
  def in_paper(self) -> bool:
    return self != PaperDesign.SPLITWISE_ANY

  def space(self, step: int, max_machines: int = 60, refine_step: int = 0,
            strategy: Strategy = Strategy.SWEEP, local_refine: bool = False) -> SearchSpace:
    """The provisioning space of this design (grid ``step`` machines)."""
    _, first, second = self.value
    if not self.split:
      return SearchSpace(colocated_kinds=first, step=step, max_machines=max_machines,
                         strategy=strategy)
    return SearchSpace(prompt_kinds=first, token_kinds=second, step=step,
                       max_machines=max_machines, refine_step=refine_step, strategy=strategy,
                       local_refine=local_refine)


PAPER_DESIGNS = tuple(d for d in PaperDesign if d.in_paper)


class Variant(enum.Enum):
  """Modeling choices; the non-OURS ones switch one of ours to the paper simulator's."""
  OURS = "ours"                   # GQA-sized KV, layer-wise transfer for long prompts
  SERIAL_TRANSFER = "serial"      # every KV cache sent after its prefill (one copy)
  NO_GQA_KV = "no_gqa_kv"         # KV sized with num_kv_heads = num_heads (8x for Llama2-70B)
  PAPER_KV = "paper_kv"           # both: 8x the KV bytes, each sent after its prefill
  BATCH_DECODE = "batch_decode"   # decode step time by batch size alone (context ignored)

  @property
  def description(self) -> str:
    return {Variant.OURS: "our model",
            Variant.SERIAL_TRANSFER: "KV sent serially after each prefill",
            Variant.NO_GQA_KV: "KV sized without GQA (8x larger)",
            Variant.PAPER_KV: "both (the paper simulator's KV)",
            Variant.BATCH_DECODE: "decode priced by batch size alone"}[self]


class Tuning(enum.Enum):
  """Scheduler settings beyond the paper's (searched for Splitwise-any only)."""
  DEFAULT = "default"            # borrow a token machine above 4096 pending prompt tokens
  LAZY_BORROW = "lazy_borrow"    # ... above LAZY_BORROW_PROMPT_TOKENS: fewer TBT-hurting loans


LAZY_BORROW_PROMPT_TOKENS = 16384   # mean pending prompt tokens per prompt machine


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
  tuning: Tuning = Tuning.DEFAULT

  def describe(self) -> str:
    return (f"{self.trace.value} {self.design.label} {self.budget.describe()}"
            + ("" if self.variant == Variant.OURS else f" [{self.variant.value}]")
            + ("" if self.tuning == Tuning.DEFAULT else f" [{self.tuning.value}]"))


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """How hard to search. Probes: Poisson arrivals for ``min_duration_s`` seconds
  (``code_min_duration_s`` on the code trace; at least ``requests`` requests),
  judged on the arrivals from ``measure_from`` to ``measure_to`` of that span
  (steady state: see ``provision_probe.ProbeSettings``; the code trace's
  outputs are short, p99 249 vs 601 tokens, so its queues settle sooner: 60 s
  probes gave the max rates of 240 s ones as closely as 120 s probes did, while
  60 s conversation probes flattered Splitwise by two 5% steps; the report's
  length check re-measures both every run).
  Grid ``step`` (machines), ``tolerance`` of the max-rate bisection (relative),
  ``refine_step`` of the iso-throughput and Splitwise-any searches (0: grid
  only), ``strategy`` of the budget searches (CLIMB: each kind pair's best
  split climbed, assuming the max rate unimodal along the budget; SWEEP: every
  split bisected), ``local_refine`` (iso-throughput: the finer grid only within
  one grid step of the coarse winner's prompt count), ``budget_scale`` x the paper's budgets (and of the 70 req/s of the
  cost-optimal claim), ``workers`` processes (0: one per CPU)."""
  requests: int = 1000
  min_duration_s: float = 120.0
  code_min_duration_s: float = 60.0
  measure_from: float = 0.25
  measure_to: float = 0.75
  step: int = 5
  tolerance: float = 0.05
  refine_step: int = 1
  strategy: Strategy = Strategy.CLIMB
  local_refine: bool = True       # iso-throughput: refine near the coarse winner only
  budget_scale: float = 1.0
  traces: tuple[Trace, ...] = (Trace.CODE, Trace.CONV)
  # Mixed-pool tunings Splitwise-any is searched with (the better one counts).
  tunings: tuple[Tuning, ...] = (Tuning.DEFAULT, Tuning.LAZY_BORROW)
  workers: int = 0
  cache_dir: str = ""
  deviation: float = 0.2          # |ours / paper - 1| above this triggers the reruns
  seed: int = 0

  def duration_s(self, trace: Trace) -> float:
    """The shortest probe on ``trace``, seconds of arrivals."""
    return self.code_min_duration_s if trace == Trace.CODE else self.min_duration_s

  def probe(self, trace: Trace, min_duration_s: float | None = None) -> ProbeSettings:
    """The probes of these settings on ``trace`` (optionally with another duration)."""
    return ProbeSettings(requests=self.requests, seed=self.seed,
                         min_duration_s=(self.duration_s(trace) if min_duration_s is None
                                         else min_duration_s),
                         measure_from=self.measure_from, measure_to=self.measure_to)

  @property
  def resolution(self) -> float:
    """Relative change a ratio of two max rates can show by lattice rounding
    alone (each rate is a ``tolerance`` lattice point)."""
    return (1.0 + self.tolerance) ** 2 - 1.0

  @property
  def max_machines(self) -> int:
    """Per pool, iso-throughput searches (1.5 x the budget's H100 count)."""
    return max(2 * self.step, math.ceil(1.5 * PAPER_H100_MACHINES * self.budget_scale))


QUICK = RunSettings(min_duration_s=60.0, code_min_duration_s=60.0, step=10, tolerance=0.1,
                    refine_step=0, tunings=(Tuning.DEFAULT,))


def base_sim(trace: Trace, design: PaperDesign, variant: Variant = Variant.OURS,
             tuning: Tuning = Tuning.DEFAULT):
  """The SimConfig a design's probes start from (pools are replaced per layout)."""
  from splitjax.config import TransferMode, from_config_dict
  from splitjax.sim.sim_config import DecodeModel, PoolConfig, SimConfig, design_config_dict
  _, first, second = design.value          # pools are replaced per layout
  if design.split:
    cd = design_config_dict(prompt=PoolConfig(1, first[0]), token=PoolConfig(1, second[0]))
  else:
    cd = design_config_dict(colocated=PoolConfig(1, first[0]))
  cd.workload.trace = trace.value
  if tuning == Tuning.LAZY_BORROW:
    cd.scheduler.borrow_prompt_tokens = LAZY_BORROW_PROMPT_TOKENS
  if variant in (Variant.SERIAL_TRANSFER, Variant.PAPER_KV):
    cd.cluster.transfer = TransferMode.SERIALIZED.value
  if variant == Variant.BATCH_DECODE:
    cd.cluster.decode_model = DecodeModel.BATCH_ONLY.value
  if variant in (Variant.NO_GQA_KV, Variant.PAPER_KV):
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
  seconds: float = 0.0     # wall
  cpu_s: float = 0.0       # CPU time of the process that ran it

  def to_dict(self) -> dict:
    s = self.spec
    return {"trace": s.trace.value, "design": s.design.label, "variant": s.variant.value,
            "tuning": s.tuning.value,
            "budget": s.budget.describe(), "best": self.best.to_dict() if self.best else None,
            "rows": [r.to_dict() for r in self.rows], "probes": self.probes,
            "seconds": self.seconds, "cpu_s": self.cpu_s}


CODE_COST_OPTIMAL_RATE = 70.0  # req/s (x RunSettings.budget_scale)

Outcomes = Mapping[SearchSpec, SearchOutcome]


def budget_spec(trace: Trace, design: PaperDesign, kind: BudgetKind, settings: RunSettings,
                variant: Variant = Variant.OURS, tuning: Tuning = Tuning.DEFAULT) -> SearchSpec:
  return SearchSpec(trace, design, paper_budget(kind, settings.budget_scale), variant, tuning)


def hhcap_spec(trace: Trace, rate: float, variant: Variant = Variant.OURS) -> SearchSpec:
  """Least-power HHcap cluster serving ``rate`` req/s (Baseline-H100's max)."""
  return SearchSpec(trace, PaperDesign.SPLITWISE_HHCAP,
                    Budget(BudgetKind.ISO_THROUGHPUT, rate=rate, minimize=Objective.POWER),
                    variant)


def code_cost_spec(settings: RunSettings, variant: Variant = Variant.OURS) -> SearchSpec:
  return SearchSpec(Trace.CODE, PaperDesign.SPLITWISE_HH,
                    Budget(BudgetKind.ISO_THROUGHPUT,
                           rate=CODE_COST_OPTIMAL_RATE * settings.budget_scale), variant)


@dataclasses.dataclass(frozen=True)
class LengthCheck:
  """A layout's max rate (req/s) with probes of at least ``duration_s`` seconds
  of arrivals: how much the answer depends on probe length (too short a probe
  ends before queues settle)."""
  trace: Trace
  design: PaperDesign
  layout: Layout
  duration_s: float
  max_rate: float


HHCAP_PAPER_SPLIT = (25, 21)   # configs/sim/splitwise_hhcap.py: H100 prompt : capped H100 token


@dataclasses.dataclass(frozen=True)
class FixedSplitCheck:
  """The least-power HHcap layout on the paper's prompt : token split (scaled
  by tenths) serving ``rate`` req/s: ``layout`` None if even 1.5x the split
  misses it; ``power_w`` its GPU power, ``baseline_power_w`` Baseline-H100's
  (the iso-power budget)."""
  trace: Trace
  rate: float
  layout: Layout | None
  power_w: float
  baseline_power_w: float

  @property
  def ratio(self) -> float:
    return self.power_w / self.baseline_power_w
