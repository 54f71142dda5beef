"""Slowdowns against an unloaded reference machine and the paper's nine SLOs (no jax).

A request's *reference* latencies are those of the request run alone on one
unloaded machine of kind ``SLOConfig.reference_hardware`` (the paper: DGX-A100),
timed exactly as the simulator times a lone request on a co-located instance:

  TTFT_ref = prefill_time([prompt])
  step k   = decode_step_time(1, prompt + k), k = 1 .. output - 1
  E2E_ref  = TTFT_ref + sum of the steps;  TBT_ref = mean step (none for 1-token outputs)

A slowdown is measured / reference (dimensionless) per completed request. The
SLOs bound the p50 / p90 / p99 slowdowns of TTFT, TBT and E2E (``SLOConfig``);
all nine must hold. Failed and rejected requests have no latency and do not
enter the percentiles (``summary.json`` counts them).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Sequence

import numpy as np

from splitjax.metrics import Percentiles, RequestRecord, RequestStatus
from splitjax.sim.hardware import get_hardware
from splitjax.sim.perf_model import PerfModel, PerfModelError
from splitjax.sim.sim_config import SimConfig, SLOConfig

PERCENTILES = (50, 90, 99)         # those of metrics.Percentiles


class SLOMetric(enum.Enum):
  """A latency the SLOs judge; the value names the ``SLOConfig`` field."""
  TTFT = "ttft"
  TBT = "tbt"
  E2E = "e2e"


@dataclasses.dataclass(frozen=True)
class ReferenceLatencies:
  """Per-request reference latencies, seconds (float64 arrays; TBT is NaN for
  1-token outputs)."""
  ttft_s: np.ndarray
  tbt_s: np.ndarray
  e2e_s: np.ndarray


def reference_latencies(perf: PerfModel, prompt_tokens: Sequence[int],
                        output_tokens: Sequence[int]) -> ReferenceLatencies:
  """Latencies of each (prompt, output) request run alone on ``perf``'s machine.

  One prefill call per distinct prompt length and one vectorized decode call
  for every context up to the longest: a step's time depends on its context
  only, so a request's decode time is a difference of one cumulative sum.
  """
  p = np.asarray(prompt_tokens, dtype=np.int64)
  o = np.asarray(output_tokens, dtype=np.int64)
  if p.shape != o.shape or p.ndim != 1:
    raise ValueError(f"prompt and output lengths must be two equal 1-D sequences, "
                     f"got shapes {p.shape} and {o.shape}")
  if p.size == 0:
    empty = np.zeros(0)
    return ReferenceLatencies(empty, empty, empty)
  if p.min() < 1 or o.min() < 1:
    raise ValueError("prompt and output lengths must be >= 1 token")
  lengths, inverse = np.unique(p, return_inverse=True)
  ttft = np.array([perf.prefill_time([int(n)]) for n in lengths])[inverse]
  # steps[c] = seconds of a batch-1 step at context c; cum[c] = sum of steps[:c].
  steps = perf.decode_step_times(1, np.arange(int((p + o).max()), dtype=np.float64))
  cum = np.concatenate(([0.0], np.cumsum(steps)))
  decode = cum[p + o] - cum[p + 1]            # contexts prompt+1 .. prompt+output-1
  with np.errstate(invalid="ignore", divide="ignore"):
    tbt = np.where(o > 1, decode / (o - 1), np.nan)
  return ReferenceLatencies(ttft, tbt, ttft + decode)


def reference_perf_model(cfg: SimConfig, models: dict[str, PerfModel] | None = None
                         ) -> PerfModel:
  """The run's perf-model kind for its model on one ``cfg.slo.reference_hardware``
  machine; a PerfModelError naming the way out if that machine has no profile.
  ``models``: as for ``sim.build.build`` (read and filled in)."""
  from splitjax.sim.build import perf_model
  hw = get_hardware(cfg.slo.reference_hardware)
  if models is not None and hw.name in models:
    return models[hw.name]
  try:
    model = perf_model(cfg, hw)
    if models is not None:
      models[hw.name] = model
    return model
  except PerfModelError as e:
    raise PerfModelError(
        f"SLO reference machine '{hw.name}' cannot price {cfg.model.name}: {e}. Set "
        f"--config.slo.reference_hardware to a machine kind profiled for it, or use "
        f"--config.cluster.perf_model=roofline") from None


def slowdowns(records: Sequence[RequestRecord], perf: PerfModel) -> dict[SLOMetric, np.ndarray]:
  """Measured / reference latency of each completed request, per metric
  (TBT leaves out 1-token outputs)."""
  done = [r for r in records if r.status == RequestStatus.COMPLETED]
  ref = reference_latencies(perf, [r.prompt_tokens for r in done],
                            [r.output_tokens for r in done])
  ttft = np.array([r.ttft_s for r in done], dtype=np.float64)
  e2e = np.array([r.e2e_s for r in done], dtype=np.float64)
  tbt = np.array([np.nan if r.tbt_s is None else r.tbt_s for r in done], dtype=np.float64)
  multi = ~np.isnan(ref.tbt_s) & ~np.isnan(tbt)
  return {SLOMetric.TTFT: ttft / ref.ttft_s, SLOMetric.TBT: tbt[multi] / ref.tbt_s[multi],
          SLOMetric.E2E: e2e / ref.e2e_s}


@dataclasses.dataclass(frozen=True)
class SLOCheck:
  """One of the nine SLOs: the ``percentile`` of ``metric``'s slowdowns against
  its ``limit`` (at the limit holds). ``slowdown`` is NaN when no request has
  that latency: TTFT / E2E then fail (nothing completed), TBT holds if requests
  completed with one token each."""
  metric: SLOMetric
  percentile: int
  slowdown: float
  limit: float
  met: bool

  @property
  def name(self) -> str:
    return f"{self.metric.value}_p{self.percentile}"


@dataclasses.dataclass(frozen=True)
class SLOReport:
  """The nine checks (summary.json's ``slowdown`` and ``slo`` sections)."""
  checks: tuple[SLOCheck, ...]
  reference_hardware: str

  @property
  def met(self) -> bool:
    return all(c.met for c in self.checks)

  def slowdown_dict(self) -> dict:
    out: dict = {}
    for c in self.checks:
      out.setdefault(c.metric.value, {})[f"p{c.percentile}"] = c.slowdown
    return out

  def slo_dict(self) -> dict:
    return {"met": self.met, "reference_hardware": self.reference_hardware,
            "per_metric": {c.name: {"slowdown": c.slowdown, "limit": c.limit, "met": c.met}
                           for c in self.checks}}

  def line(self) -> str:
    """One line for the terminal: verdict, then each check (x = slowdown)."""
    worst = [f"{c.name} {c.slowdown:.2f}x/{c.limit:g}x" for c in self.checks if not c.met]
    head = "met" if self.met else f"NOT met ({len(worst)} of {len(self.checks)} fail)"
    vals = " ".join(f"{m.value} " + "/".join(f"{c.slowdown:.2f}" for c in self.checks
                                               if c.metric == m) for m in SLOMetric)
    return f"SLO {head}; slowdown p50/p90/p99: {vals}" + (
        f"; failing: {', '.join(worst)}" if worst else "")


def check(slow: dict[SLOMetric, np.ndarray], slo: SLOConfig) -> SLOReport:
  """The nine SLO checks of these slowdowns (linear-interpolated percentiles)."""
  checks = []
  completed = np.asarray(slow[SLOMetric.TTFT]).size > 0
  for metric in SLOMetric:
    values = np.asarray(slow[metric], dtype=np.float64)
    pcts = _percentiles(values) if values.size else [math.nan] * 3
    for q, value, limit in zip(PERCENTILES, pcts, getattr(slo, metric.value)):
      met = value <= limit if values.size else metric == SLOMetric.TBT and completed
      checks.append(SLOCheck(metric, q, float(value), float(limit), bool(met)))
  return SLOReport(tuple(checks), slo.reference_hardware)


def _percentiles(values: np.ndarray) -> tuple[float, float, float]:
  """``np.percentile(values, PERCENTILES)``, float for float (``Percentiles``)."""
  p = Percentiles.of_array(values)
  return p.p50, p.p90, p.p99


def evaluate(cfg: SimConfig, records: Sequence[RequestRecord]) -> SLOReport:
  """Slowdowns of ``records`` against ``cfg.slo``'s reference machine, checked."""
  return check(slowdowns(records, reference_perf_model(cfg)), cfg.slo)
