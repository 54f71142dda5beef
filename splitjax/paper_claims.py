"""The Splitwise paper's headline claims (:class:`ClaimKey`) computed from
finished searches (``splitjax.paper`` outcomes) only, so they are testable on
hand-made outcomes; :func:`claim_specs` / :func:`hhcap_specs` name the searches
a claim needs on given traces (for the reruns under another modeling
:class:`Variant`: on the traces its value comes from, :attr:`Claim.traces`)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable

from splitjax.paper import (PAPER_DESIGNS, LayoutPoint, Outcomes, PaperDesign, RunSettings,
                            SearchSpec, Trace, Tuning, Variant, budget_spec, code_cost_spec,
                            hhcap_spec)
from splitjax.provision import BudgetKind


class ClaimKey(enum.Enum):
  """The paper's headline claims, each with its published value (None: the
  paper gives no single number) and the unit of the value we compute."""
  THROUGHPUT_AT_LOWER_COST = ("1.4x throughput at 20% lower cost", 1.4, "x throughput")
  SAME_COST_AND_POWER = ("2.35x throughput at the same cost and power", 2.35, "x throughput")
  HHCAP_LOWER_POWER = ("HHcap matches Baseline-H100 throughput at 25% lower power", 0.75,
                       "x power")
  CODE_COST_OPTIMAL = ("the cost-optimal HH split at 70 req/s on the code trace", None, "$/h")
  BEYOND_ISO_POWER = ("beyond the paper: Splitwise-any (any prompt / token kinds) vs the "
                      "paper's best design at iso-power", None, "x throughput")
  BEYOND_ISO_COST = ("beyond the paper: Splitwise-any (any prompt / token kinds) vs the "
                     "paper's best design at iso-cost", None, "x throughput")

  @property
  def text(self) -> str:
    return self.value[0]

  @property
  def paper_value(self) -> float | None:
    return self.value[1]

  @property
  def unit(self) -> str:
    return self.value[2]

  @property
  def lowest_over_traces(self) -> bool:
    """The claim's value is the lowest over traces (else the highest, or one trace's)."""
    return self in (ClaimKey.HHCAP_LOWER_POWER, ClaimKey.BEYOND_ISO_POWER,
                    ClaimKey.BEYOND_ISO_COST)


COST_CUT_TOLERANCE = 0.05     # "20% lower cost": designs costing <= (0.8 + this) x Baseline-H100


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim: ``our_value`` (None: not computed) from ``basis`` (what was
  compared, per trace); ``detail``: the numbers behind it; ``traces``: the
  trace(s) the value comes from (a claim taking the best or the lowest over
  traces: the one that gave it)."""
  key: ClaimKey
  our_value: float | None
  basis: str
  detail: str = ""
  our_label: str = ""        # a layout, for claims whose value is a cluster
  traces: tuple[Trace, ...] = ()

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
            "basis": self.basis, "detail": self.detail, "our_layout": self.our_label,
            "traces": [t.value for t in self.traces]}


def _best(outcomes: Outcomes, spec: SearchSpec) -> LayoutPoint | None:
  o = outcomes.get(spec)
  return o.best if o else None


def _vs_baseline(outcomes: Outcomes, settings: RunSettings, variant: Variant,
                 baseline: PaperDesign, designs: Iterable[PaperDesign],
                 cost_limit: float) -> tuple[float | None, str, str, tuple[Trace, ...]]:
  """Highest iso-power throughput ratio of ``designs`` over ``baseline``
  among those costing <= ``cost_limit`` x the baseline: (value, winner,
  detail, the winner's trace)."""
  best, where, parts, traces = None, "", [], ()
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
        best, where, traces = thr, f"{trace.value} {d.label}", (trace,)
  return best, where, "; ".join(parts), traces


def compute_claims(outcomes: Outcomes, settings: RunSettings,
                   variant: Variant = Variant.OURS) -> tuple[Claim, ...]:
  """Every claim from finished searches (a missing search leaves its value None)."""
  splits = [d for d in PAPER_DESIGNS if d.split]
  v1, w1, d1, t1 = _vs_baseline(outcomes, settings, variant, PaperDesign.BASELINE_H100, splits,
                            0.8 + COST_CUT_TOLERANCE)
  v2, w2, d2, t2 = _vs_baseline(outcomes, settings, variant, PaperDesign.BASELINE_A100,
                            [PaperDesign.SPLITWISE_AA], 1.0 + 1e-9)
  claims = [
      Claim(ClaimKey.THROUGHPUT_AT_LOWER_COST, v1,
            f"iso-power: best Splitwise design costing <= {0.8 + COST_CUT_TOLERANCE:.2f}x "
            f"Baseline-H100, max rate / Baseline-H100's ({w1 or 'none'})", d1, traces=t1),
      Claim(ClaimKey.SAME_COST_AND_POWER, v2,
            f"iso-power: Splitwise-AA / Baseline-A100 max rate, same machines so same "
            f"cost and power ({w2 or 'none'})", d2, traces=t2),
      _hhcap_claim(outcomes, settings, variant), _code_claim(outcomes, settings, variant),
      _beyond_claim(outcomes, settings, variant, BudgetKind.ISO_POWER),
      _beyond_claim(outcomes, settings, variant, BudgetKind.ISO_COST)]
  return tuple(claims)


def _beyond_claim(outcomes: Outcomes, settings: RunSettings, variant: Variant,
                  kind: BudgetKind) -> Claim:
  """Splitwise-any's best (either tuning) max rate / the best of the paper's
  designs (lowest over traces)."""
  key = (ClaimKey.BEYOND_ISO_POWER if kind == BudgetKind.ISO_POWER
         else ClaimKey.BEYOND_ISO_COST)
  worst, parts, label, where = None, [], "", ()
  for trace in settings.traces:
    spec = lambda d, t=Tuning.DEFAULT: budget_spec(trace, d, kind, settings, variant, t)
    anys = [(b, t) for t in Tuning
            if (b := _best(outcomes, spec(PaperDesign.SPLITWISE_ANY, t)))]
    paper = [(b, d) for d in PAPER_DESIGNS if (b := _best(outcomes, spec(d)))]
    if not anys or not paper:
      continue
    ours, tuning = max(anys, key=lambda x: x[0].max_rate)
    top, d = max(paper, key=lambda x: x[0].max_rate)
    ratio = ours.max_rate / top.max_rate
    parts.append(f"{trace.value}: {ours.layout.label} ({tuning.value} mixed pool) "
                 f"{ours.max_rate:.1f} req/s ({ours.cost_per_hour_usd:.0f} $/h, "
                 f"{ours.power_w / 1e3:.0f} kW) vs {d.label} {top.layout.label} "
                 f"{top.max_rate:.1f} req/s")
    if worst is None or ratio < worst:
      worst, label, where = ratio, ours.layout.label, (trace,)
  tunings = " or ".join(t.value for t in settings.tunings)
  return Claim(key, worst, f"Splitwise-any winner ({tunings} mixed pool) / best of the six "
               "designs' winners, same budget (lowest over traces)", "; ".join(parts), label,
               where)


def _hhcap_claim(outcomes: Outcomes, settings: RunSettings, variant: Variant) -> Claim:
  best, parts, where = None, [], ()
  for trace in settings.traces:
    base = _best(outcomes, budget_spec(trace, PaperDesign.BASELINE_H100, BudgetKind.ISO_POWER,
                                       settings, variant))
    cap = _best(outcomes, hhcap_spec(trace, base.max_rate, variant)) if base else None
    if not (base and cap):
      continue
    ratio = cap.power_w / base.power_w
    parts.append(f"{trace.value}: {cap.layout.label} serves {base.max_rate:.1f} req/s at "
                 f"{cap.power_w / 1e3:.0f} kW vs {base.power_w / 1e3:.0f} kW ({ratio:.2f}x)")
    if best is None or ratio < best:
      best, where = ratio, (trace,)
  return Claim(ClaimKey.HHCAP_LOWER_POWER, best,
               "least-power HHcap layout at Baseline-H100's iso-power max rate, power / "
               "Baseline-H100's (lowest over traces)", "; ".join(parts), traces=where)


def _code_claim(outcomes: Outcomes, settings: RunSettings, variant: Variant) -> Claim:
  spec = code_cost_spec(settings, variant)
  p = _best(outcomes, spec)
  basis = f"least-cost HH layout meeting {spec.budget.rate:g} req/s (code trace)"
  if not p:
    return Claim(ClaimKey.CODE_COST_OPTIMAL, None, basis, "not run" if spec not in outcomes
                 else "no layout met the rate")
  return Claim(ClaimKey.CODE_COST_OPTIMAL, p.cost_per_hour_usd, basis,
               f"{p.layout.label}: {p.cost_per_hour_usd:.0f} $/h, {p.power_w / 1e3:.0f} kW, "
               f"max {p.max_rate:.1f} req/s", p.layout.label, (Trace.CODE,))


def claim_specs(key: ClaimKey, settings: RunSettings, variant: Variant,
                traces: Iterable[Trace] | None = None) -> list[SearchSpec]:
  """The budget searches a claim needs on ``traces`` (None: every trace of
  ``settings``; HHcap's rate-dependent search aside).
  THROUGHPUT_AT_LOWER_COST: only the designs that can cost ~0.8x Baseline-H100
  at iso-power (AA: 0.81x; HA: 0.81-1.0x by its split; HH / HHcap >= 1.0x)."""
  traces = settings.traces if traces is None else tuple(traces)
  d = PaperDesign
  designs = {ClaimKey.THROUGHPUT_AT_LOWER_COST: [d.BASELINE_H100, d.SPLITWISE_AA,
                                                 d.SPLITWISE_HA],
             ClaimKey.SAME_COST_AND_POWER: [d.BASELINE_A100, d.SPLITWISE_AA],
             ClaimKey.HHCAP_LOWER_POWER: [d.BASELINE_H100]}.get(key, [])
  out = [budget_spec(t, x, BudgetKind.ISO_POWER, settings, variant)
         for t in traces for x in designs]
  if key == ClaimKey.CODE_COST_OPTIMAL and Trace.CODE in traces:
    out.append(code_cost_spec(settings, variant))
  return out


def hhcap_specs(outcomes: Outcomes, settings: RunSettings, variant: Variant = Variant.OURS,
                traces: Iterable[Trace] | None = None) -> list[SearchSpec]:
  """The HHcap iso-throughput searches on ``traces`` (None: every trace of
  ``settings``), once Baseline-H100's max rates are known."""
  out = []
  for trace in settings.traces if traces is None else traces:
    base = _best(outcomes, budget_spec(trace, PaperDesign.BASELINE_H100, BudgetKind.ISO_POWER,
                                       settings, variant))
    if base and base.max_rate > 0:
      out.append(hhcap_spec(trace, base.max_rate, variant))
  return out
