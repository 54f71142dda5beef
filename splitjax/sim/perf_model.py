"""Performance models: how long a batch takes (seconds) and what an instance draws (watts).

One interface (:class:`PerfModel`), two implementations: :class:`ProfilePerfModel`
(here: the paper's measured profiles, read from ``../shared/data``, never copied) and
``roofline.RooflineModel`` (FLOPs and bytes of a ``ModelConfig`` on a ``Hardware``,
calibrated against the A100 Llama2-70B profile). An *instance* is one model
replica on ``tp`` devices of one machine. Plain Python + numpy: no jax.

The profile's power columns (checked against the data): ``peak_power`` and
``average_power`` are fractions of the rated power of the *GPUs in use*, not of
the machine: with tensor_parallel=2 the average is 0.74 (4.8 kW could not come
from two 400 W GPUs), peaks reach 1.09 (transients above TDP), and 0.0 means
"not measured" (all H100 rows; rows with batch > 16 or > 128 output tokens).
A row is a whole request, ~98% of it decoding, so ``average_power`` is the
decode draw and ``peak_power`` the prefill draw (A100 tp=8 medians: 0.92 / 0.43).
"""

from __future__ import annotations

import bisect
import collections
import csv
import dataclasses
import enum
import itertools
import math
import operator
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from splitjax.config import ModelConfig
from splitjax.sim.hardware import Hardware, PhasePower, hardware_for_device, instance_power_w


class Phase(enum.Enum):
  """What an instance is doing."""
  PREFILL = "prefill"
  DECODE = "decode"
  MIXED = "mixed"
  IDLE = "idle"


class PerfModelError(ValueError):
  """A profile is missing or malformed, or a batch description is invalid."""


@runtime_checkable
class PerfModel(Protocol):
  """Latency (seconds) and power (watts) of one instance. Chunks are
  ``(start, length)``: ``length`` prompt tokens attending to ``start`` cached ones."""

  def prefill_time(self, prompt_lens: Sequence[int]) -> float:
    """Seconds to prefill one batch of prompts of these lengths (tokens)."""

  def decode_time(self, context_lens: Sequence[int]) -> float:
    """Seconds for one decode iteration of rows with these contexts (prompt + generated)."""

  def decode_step_time(self, batch: int, context_sum: int) -> float:
    """``decode_time`` of ``batch`` rows whose contexts add up to ``context_sum``
    (the models here depend on nothing else; the simulator's leap mode uses this
    to price each step in O(1) as every context grows by one)."""

  def decode_step_times(self, batch: int, context_sums: np.ndarray) -> np.ndarray:
    """``decode_step_time`` for each entry of ``context_sums`` (float64 array),
    bit-identical to the scalar calls; a new array (the caller may change it)."""

  def mixed_time(self, context_lens: Sequence[int], chunks: Sequence[tuple[int, int]]) -> float:
    """Seconds for one iteration running decode rows plus prompt chunks."""

  def power_w(self, phase: Phase) -> float:
    """Watts drawn by the instance while in ``phase``."""


def _lengths(name: str, values: Sequence[int], minimum: int) -> list[int]:
  out = []
  for v in values:
    try:
      n = operator.index(v)
    except TypeError:
      raise PerfModelError(f"{name} must be integers, got {v!r}") from None
    if n < minimum:
      raise PerfModelError(f"{name} must be >= {minimum}, got {n}")
    out.append(n)
  return out


def _chunks(chunks: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  if any(len(c) != 2 for c in chunks):
    raise PerfModelError(f"a chunk is (start, length), got {list(chunks)!r}")
  return list(zip(_lengths("chunk starts", [c[0] for c in chunks], 0),
                  _lengths("chunk lengths", [c[1] for c in chunks], 1)))


@dataclasses.dataclass(frozen=True)
class Curve:
  """Piecewise-linear y(x) through knots, made non-decreasing (running maximum),
  extended linearly beyond the first / last knot and clamped at 0."""
  xs: tuple[float, ...]
  ys: tuple[float, ...]

  @classmethod
  def through(cls, points: dict[float, float]) -> Curve:
    xs = sorted(points)
    if not xs:
      raise PerfModelError("a curve needs at least one point")
    ys = np.maximum.accumulate([points[x] for x in xs])
    return cls(tuple(float(x) for x in xs), tuple(float(y) for y in ys))

  def __call__(self, x: float) -> float:
    xs, ys = self.xs, self.ys
    if len(xs) == 1:
      return ys[0]
    if xs[0] < x < xs[-1]:
      i = bisect.bisect_right(xs, x) - 1
      if x == xs[i]:
        return ys[i]
    else:
      i = 0 if x <= xs[0] else len(xs) - 2
    return max(0.0, ys[i] + (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) * (x - xs[i]))


def default_profile_path() -> Path:
  """``../shared/data/splitwise-profiles/perf_model.csv`` next to the repository."""
  return (Path(__file__).resolve().parents[3] / "shared" / "data" / "splitwise-profiles"
          / "perf_model.csv")


PROFILE_COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size",
                   "peak_power", "average_power", "prompt_time", "token_time",
                   "e2e_time", "tensor_parallel")


@dataclasses.dataclass(frozen=True)
class ProfilePoint:
  """One (prompt_size, batch_size, token_size) point, repeats averaged.

  Times in seconds; power as fractions of rated device power (nan: not measured).
  """
  prompt_size: int
  batch_size: int
  token_size: int
  prompt_s: float
  token_s: float
  e2e_s: float
  peak_power: float
  average_power: float

  @property
  def mean_context(self) -> float:
    """Mean context of the profiled decode iterations, tokens.

    Generation often stopped before ``token_size`` (e.g. token_size 8192 runs
    last as long as ~560 iterations), so the number of iterations is taken from
    the run itself: n = (e2e - prompt) / token_time, capped at token_size.
    """
    n = (self.e2e_s - self.prompt_s) / self.token_s
    n = self.token_size if n <= 0 else min(self.token_size, n)   # e2e missing: token_size
    return self.prompt_size + n / 2


def read_profile(path: str | os.PathLike, model: str, hardware: str,
                 tp: int) -> list[ProfilePoint]:
  """The profile's points for (model, hardware, tensor_parallel), repeats averaged."""
  path = Path(path)
  if not path.exists():
    raise PerfModelError(f"profile not found: {path}")
  groups, available = collections.defaultdict(list), set()
  with path.open(newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in PROFILE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise PerfModelError(f"{path}: missing column(s) {', '.join(missing)}")
    for line, row in enumerate(reader, start=2):
      try:
        key = (row["model"], row["hardware"], int(row["tensor_parallel"]))
        available.add(key)
        if key == (model, hardware, tp):
          shape = tuple(int(row[c]) for c in ("prompt_size", "batch_size", "token_size"))
          groups[shape].append([float(row[c] or 0.0) for c in PROFILE_COLUMNS[5:10]])
      except (TypeError, ValueError) as e:
        raise PerfModelError(f"{path}:{line}: malformed row ({e})") from None
  if not groups:
    known = "; ".join(f"{m}/{h}/tp={t}" for m, h, t in sorted(available))
    raise PerfModelError(f"{path}: no rows for {model}/{hardware}/tp={tp} (available: {known})")
  points = []
  for (p, b, t), vals in sorted(groups.items()):
    v = np.array(vals)
    power = [float(np.mean(col[col > 0])) if (col > 0).any() else math.nan
             for col in (v[:, 0], v[:, 1])]
    prompt_ms, token_ms, e2e_ms = v[:, 2:].mean(axis=0)
    if prompt_ms <= 0 or token_ms <= 0:
      raise PerfModelError(f"{path}: non-positive prompt_time / token_time at "
                           f"prompt_size={p} batch_size={b} token_size={t}")
    points.append(ProfilePoint(p, b, t, prompt_ms / 1e3, token_ms / 1e3, e2e_ms / 1e3, *power))
  return points


def fit_nonnegative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Least squares ``x @ c ~ y`` with ``c >= 0`` (exact, by trying every support;
  meant for a handful of columns)."""
  best, best_c = math.inf, np.zeros(x.shape[1])
  for k in range(1, x.shape[1] + 1):
    for cols in itertools.combinations(range(x.shape[1]), k):
      c, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
      if (c < 0).any():
        continue
      err = float(np.sum((x[:, cols] @ c - y) ** 2))
      if err < best:
        best, best_c = err, np.zeros(x.shape[1])
        best_c[list(cols)] = c
  return best_c


def fit_decode(points: Sequence[ProfilePoint]) -> tuple[tuple[float, float, float], float, float]:
  """Fits token_time = a + b * batch + c * batch * mean_context (a, b, c >= 0).

  Minimizes the squared *relative* error. Returns ((a s, b s/row,
  c s/(row x context token)), rms relative error, max |relative error|).
  """
  batch = np.array([p.batch_size for p in points], float)
  ctx = np.array([p.mean_context for p in points])
  y = np.array([p.token_s for p in points])
  x = np.stack([np.ones_like(batch), batch, batch * ctx], axis=1)
  coef = fit_nonnegative(x / y[:, None], np.ones_like(y))
  rel = x @ coef / y - 1.0
  return tuple(map(float, coef)), float(np.sqrt(np.mean(rel ** 2))), float(np.abs(rel).max())


@dataclasses.dataclass(frozen=True)
class ProfilePerfModel:
  """Latency from the paper's measured profiles.

  Prefill: piecewise-linear over batch tokens (sum of prompt lengths), two
  measured series: ``single`` (one prompt of 128..8192 tokens) for a batch of
  one prompt, ``batched`` (batches of 512-token prompts, 2..64 of them; below
  its first point the single series) for several. At equal tokens the profile's
  batches are 4-34% slower than one long prompt (A100, tp=8); the batched curve
  is kept >= the single one so adding a prompt never makes a batch faster.

  Decode: a + b x batch + c x sum(context), fitted (see :func:`fit_decode`);
  the paper's simulator used batch size alone. The context term is identified
  by batch-1 rows only (contexts 192..8256); the profile has no large batch
  with long contexts. With ``decode_by_batch`` set (``decode_by="batch_only"``
  in :meth:`from_csv`), a step costs the profile's mean token time at its batch
  size instead, whatever the contexts (piecewise-linear over batch size, as the
  paper's simulator), and mixed steps drop their context terms.
  """
  model_name: str
  device_name: str
  tp: int
  machine: Hardware
  single: Curve
  batched: Curve
  decode_coef: tuple[float, float, float]
  decode_fit_rms: float
  decode_fit_max: float
  phase_power: PhasePower
  decode_by_batch: Curve | None = None       # batch size -> step seconds (batch-only decode)
  # prompt length -> prefill seconds of that prompt alone, filled as asked
  _single_s: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                      compare=False, hash=False)

  @classmethod
  def from_csv(cls, path: str | os.PathLike | None = None, model: str = "llama2-70b",
               hardware: str = "a100-80gb", tp: int = 8,
               machine: Hardware | None = None,
               batch_only_decode: bool = False) -> ProfilePerfModel:
    """Builds the model from the profile CSV (default :func:`default_profile_path`).

    ``hardware`` is the profile's device name; ``machine`` defaults to the
    catalog entry with that device. tp=8 is one whole DGX, as in the paper.
    ``batch_only_decode``: price decode steps by batch size alone (the paper
    simulator's choice, for comparison).
    """
    points = read_profile(path if path is not None else default_profile_path(),
                          model, hardware, tp)
    machine = machine if machine is not None else hardware_for_device(hardware)
    single, batched = _prefill_knots(points)
    coef, rms, worst = fit_decode(points)
    by_batch = Curve.through(_decode_by_batch(points)) if batch_only_decode else None
    return cls(model, hardware, tp, machine, Curve.through(single),
               Curve.through(batched), coef, rms, worst, _measured_power(points), by_batch)

  def prefill_time(self, prompt_lens: Sequence[int]) -> float:
    if len(prompt_lens) == 1 and type(prompt_lens[0]) is int:   # the common case: cached
      seconds = self._single_s.get(prompt_lens[0])
      if seconds is None:
        seconds = self._single_s[prompt_lens[0]] = self._prefill_time(prompt_lens)
      return seconds
    return self._prefill_time(prompt_lens)

  def _prefill_time(self, prompt_lens: Sequence[int]) -> float:
    lens = _lengths("prompt lengths", prompt_lens, 1)
    if not lens:
      return 0.0
    return (self.single if len(lens) == 1 else self.batched_time)(sum(lens))

  def batched_time(self, tokens: float) -> float:
    """Seconds to prefill several prompts with ``tokens`` tokens in all."""
    return max(self.single(tokens), self.batched(tokens))

  def decode_time(self, context_lens: Sequence[int]) -> float:
    ctx = _lengths("context lengths", context_lens, 0)
    return self.decode_step_time(len(ctx), sum(ctx))

  def decode_step_time(self, batch: int, context_sum: int) -> float:
    if batch <= 0:
      return 0.0
    if self.decode_by_batch is not None:
      return self.decode_by_batch(batch)
    a, b, c = self.decode_coef
    return a + b * batch + c * context_sum

  def decode_step_times(self, batch: int, context_sums: np.ndarray) -> np.ndarray:
    if batch <= 0:
      return np.zeros(len(context_sums))
    if self.decode_by_batch is not None:
      return np.full(len(context_sums), self.decode_by_batch(batch))
    a, b, c = self.decode_coef
    out = context_sums * c
    out += a + b * batch                  # (a + b * batch) + c * sum, as the scalar
    return out

  def mixed_time(self, context_lens: Sequence[int],
                 chunks: Sequence[tuple[int, int]]) -> float:
    """Decode rows ride along a prefill of (chunk tokens + one token per row).

    max(decode alone, that prefill + the rows' KV reads), plus each chunk's read
    of its cached prefix (counted like one decode row's KV read). Chunks'
    attention FLOPs over their prefix are not modelled separately.
    """
    ctx = _lengths("context lengths", context_lens, 0)
    parts = _chunks(chunks)
    if not parts:
      return self.decode_time(ctx)
    c = self.decode_coef[2] if self.decode_by_batch is None else 0.0
    tokens = len(ctx) + sum(n for _, n in parts)
    rows = len(ctx) + len(parts)
    prefill = self.single(tokens) if rows == 1 else self.batched_time(tokens)
    prefix = c * sum(s for s, _ in parts)
    return max(self.decode_time(ctx), prefill + c * sum(ctx)) + prefix

  def power_w(self, phase: Phase) -> float:
    return instance_power_w(self.machine, self.tp, getattr(self.phase_power, phase.value))


def _prefill_knots(points: Sequence[ProfilePoint]) -> tuple[dict, dict]:
  """Batch tokens -> mean prefill seconds, for single prompts and for batches."""
  single, batched = collections.defaultdict(list), collections.defaultdict(list)
  for p in points:
    (single if p.batch_size == 1 else batched)[p.prompt_size * p.batch_size].append(p.prompt_s)
  single = {x: float(np.mean(v)) for x, v in single.items()}
  batched = {x: float(np.mean(v)) for x, v in batched.items()}
  if not single:
    raise PerfModelError("the profile has no single-prompt (batch_size 1) rows")
  first = min(batched, default=math.inf)
  batched.update({x: y for x, y in single.items() if x < first})
  return single, batched


def _decode_by_batch(points: Sequence[ProfilePoint]) -> dict[float, float]:
  """Batch size -> mean token seconds over every profiled prompt / output size."""
  by = collections.defaultdict(list)
  for p in points:
    by[p.batch_size].append(p.token_s)
  return {float(b): float(np.mean(v)) for b, v in by.items()}


def _measured_power(points: Sequence[ProfilePoint]) -> PhasePower:
  """Prefill / mixed from the median peak, decode from the median average; else defaults."""
  peak = [p.peak_power for p in points if not math.isnan(p.peak_power)]
  avg = [p.average_power for p in points if not math.isnan(p.average_power)]
  if not peak or not avg:
    return PhasePower()
  prefill = _median(peak)
  return PhasePower(prefill=prefill, decode=_median(avg), mixed=prefill)


def _median(values: Sequence[float]) -> float:
  """The median, as ``np.median`` computes it (the mean of the middle two when
  even), without numpy's masked-array import."""
  xs, mid = sorted(values), len(values) // 2
  return float(xs[mid]) if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
