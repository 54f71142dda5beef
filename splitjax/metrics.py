"""Per-request latency records and run summaries (pure Python, no jax).

Definitions (seconds, measured from the request's arrival):
  queue_s  first scheduled for prefill - arrival
  ttft_s   first output token - arrival
  e2e_s    last output token - arrival
  tbt_s    per-request mean time between tokens, (e2e - ttft) / (tokens - 1):
           what the Splitwise TBT SLO judges; undefined for 1-token outputs
  itl_s    every individual gap between consecutive tokens (what a streaming
           user feels; shows preemption stalls)
"""

from __future__ import annotations

import array
import csv
import dataclasses
import enum
import math
import os
from typing import Iterable, Sequence

import numpy as np


class RequestStatus(enum.Enum):
  PENDING = "pending"
  COMPLETED = "completed"
  FAILED = "failed"        # accepted, then could not finish; ``reason`` says why
  REJECTED = "rejected"    # refused at admission; ``reason`` says why


# Statuses that need a reason (a module constant: a global read is cheaper than an Enum
# class attribute).
_NEED_REASON = (RequestStatus.FAILED, RequestStatus.REJECTED)


@dataclasses.dataclass(slots=True)
class RequestRecord:
  """What happened to one request. Times are absolute seconds on one clock.

  Token times: ``first_token_s``, ``last_token_s``, ``tokens`` (emitted so far)
  and ``max_itl_s`` are always kept; ``token_times_s`` lists every token's time
  unless it is None (large simulations keep the statistics only). Add tokens
  with :meth:`add_token` / :meth:`add_tokens`, which keep both in step.
  """
  request_id: int
  arrival_s: float
  prompt_tokens: int
  output_tokens: int                      # requested
  status: RequestStatus = RequestStatus.PENDING
  reason: str = ""
  scheduled_s: float | None = None        # prefill started
  token_times_s: list[float] | None = dataclasses.field(default_factory=list)
  prompt_instance: str = ""
  token_instance: str = ""
  transfer_bytes: int = 0
  transfer_s: float = 0.0                 # KV landed - first token: the exposed part
  preemptions: int = 0
  token_ids: list[int] = dataclasses.field(default_factory=list)
  first_token_s: float | None = None
  last_token_s: float | None = None
  tokens: int = 0
  max_itl_s: float | None = None          # longest gap between consecutive tokens

  def __post_init__(self):
    times, self.token_times_s = self.token_times_s, [] if self.token_times_s is not None else None
    for t in times or ():
      self.add_token(t)

  def finish(self, status: RequestStatus, reason: str = "") -> None:
    if status in _NEED_REASON and not reason:
      raise ValueError("a failed or rejected request needs a reason")
    self.status, self.reason = status, reason

  def add_token(self, t: float) -> None:
    """One token emitted at ``t`` (not before the previous one)."""
    self.add_tokens(t, t, 1, 0.0)

  def add_tokens(self, first_s: float, last_s: float, n: int, inner_max_gap_s: float,
                 times: Sequence[float] | None = None) -> None:
    """``n`` tokens emitted from ``first_s`` to ``last_s``, consecutive ones at
    most ``inner_max_gap_s`` apart (0 for one token). O(1) unless every time is
    kept; then ``times`` (the ``n`` times) must be given."""
    if self.token_times_s is not None and times is None and n != 1:
      raise ValueError("this record keeps every token time: pass times")
    add_decode_tokens((self,), first_s, last_s, n, inner_max_gap_s)
    if self.token_times_s is not None:
      self.token_times_s.extend((first_s,) if times is None else times)

  @property
  def queue_s(self) -> float | None:
    return None if self.scheduled_s is None else self.scheduled_s - self.arrival_s

  @property
  def ttft_s(self) -> float | None:
    return None if self.first_token_s is None else self.first_token_s - self.arrival_s

  @property
  def e2e_s(self) -> float | None:
    return None if self.last_token_s is None else self.last_token_s - self.arrival_s

  @property
  def tbt_s(self) -> float | None:
    n = self.tokens
    return (self.last_token_s - self.first_token_s) / (n - 1) if n > 1 else None

  @property
  def itl_s(self) -> list[float]:
    """Every gap between consecutive tokens (needs ``token_times_s``)."""
    t = self.token_times_s
    if t is None:
      raise ValueError(f"request {self.request_id} kept no token times")
    return [b - a for a, b in zip(t, t[1:])]


def add_decode_tokens(records: Sequence[RequestRecord], first_s: float, last_s: float, n: int,
                      inner_max_gap_s: float) -> dict[float, int]:
  """The token statistics of ``RequestRecord.add_tokens(first_s, last_s, n,
  inner_max_gap_s)`` for each of ``records`` (e.g. the decode rows of one step
  or leap), in one loop; token time lists are not touched (``add_tokens`` adds
  them). Returns each previous token time -> how many of them had it (their
  gaps into this step)."""
  since: dict[float, int] = {}
  get = since.get
  inner = inner_max_gap_s if n > 1 else None
  for rec in records:
    prev = rec.last_token_s
    since[prev] = get(prev, 0) + 1
    gap = inner
    if prev is None:
      rec.first_token_s = first_s
    elif gap is None or first_s - prev > gap:
      gap = first_s - prev
    if gap is not None and (rec.max_itl_s is None or gap > rec.max_itl_s):
      rec.max_itl_s = gap
    rec.last_token_s = last_s
    rec.tokens += n
  return since


class GapSample:
  """A multiset of inter-token gaps stored as (values, weight) runs, for runs
  too large to keep every token time. A decode step shared by a batch of
  ``w`` requests adds its gap once with weight ``w``. Storage is flat (8 bytes
  per stored value + 16 per run). Percentiles equal ``np.percentile``
  (linear) over the expanded multiset."""

  _BINS = 4096               # percentiles: bins of values, only the wanted ones sorted

  def __init__(self):
    self._values = array.array("d")
    self._lengths = array.array("q")
    self._weights = array.array("q")

  def add(self, values: np.ndarray, weight: int) -> None:
    """Each of ``values`` (seconds, float64) ``weight`` times."""
    if weight > 0 and len(values):
      self._values.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
      self._lengths.append(len(values))
      self._weights.append(weight)

  def add_value(self, value: float, weight: int = 1) -> None:
    """``value`` (seconds) ``weight`` times."""
    if weight > 0:
      self._values.append(value)
      self._lengths.append(1)
      self._weights.append(weight)

  def percentiles(self) -> "Percentiles":
    """p50 / p90 / p99 (linear, as ``np.percentile`` over the expanded multiset,
    float for float), the mean (``dot(values, weights) / count``) and the count."""
    if not self._values:
      return Percentiles(math.nan, math.nan, math.nan, math.nan, 0)
    v = np.frombuffer(self._values, dtype=np.float64)
    # Weights as floats: whole numbers, exact (sums below 2 ** 53).
    w = np.repeat(np.frombuffer(self._weights, dtype=np.int64).astype(np.float64),
                  np.frombuffer(self._lengths, dtype=np.int64))
    n = int(w.sum())
    virtual, lo, hi = _linear_ranks(n)
    at = _ranked(v, w, sorted({*lo.tolist(), *hi.tolist()}), self._BINS)
    p50, p90, p99 = _lerp(virtual, lo, np.array([at[k] for k in lo.tolist()]),
                          np.array([at[k] for k in hi.tolist()]))
    mean = float(np.dot(v, w)) / n
    return Percentiles(float(p50), float(p90), float(p99), mean, n)


def _ranked(v: np.ndarray, w: np.ndarray, ranks: list[int], bins: int = 4096) -> dict[int, float]:
  """The ``k``-th smallest (0-based) of the multiset holding each ``v[i]``
  ``w[i]`` times (``w`` > 0), for each ``k`` of ``ranks``, without expanding it:
  values are binned by a monotone map of their size, the bins' weights summed,
  and only the bins holding a wanted rank are looked into (sorted if small,
  else binned again)."""
  small, large = float(v.min()), float(v.max())
  if small == large:
    return {k: small for k in ranks}
  if len(v) <= bins:                                    # small: sort it
    order = np.argsort(v, kind="stable")
    values, cum = v[order], np.cumsum(w[order])
    return {k: float(values[np.searchsorted(cum, k, side="right")]) for k in ranks}
  scaled = v - small
  scaled *= (bins - 1) / (large - small)
  idx = scaled.astype(np.intp)                          # non-decreasing in v
  counts = np.cumsum(np.bincount(idx, weights=w, minlength=bins)).astype(np.int64)
  out: dict[int, float] = {}
  for b in sorted(set(np.searchsorted(counts, ranks, side="right").tolist())):
    before, after = (int(counts[b - 1]) if b else 0), int(counts[b])
    inside = [k for k in ranks if before <= k < after]
    mask = idx == b
    found = _ranked(v[mask], w[mask], [k - before for k in inside], bins)
    out.update({k: found[k - before] for k in inside})
  return out


_QUANTILES = np.array([50, 90, 99]) / 100


def _linear_ranks(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``np.percentile``'s 'linear' method on ``n`` values: the virtual index of
  p50 / p90 / p99 and the ranks of the two values around each."""
  virtual = (n - 1) * _QUANTILES
  lo = np.floor(virtual)
  hi = lo + 1
  top = virtual >= n - 1
  lo[top], hi[top] = n - 1, n - 1
  return virtual, lo.astype(np.intp), hi.astype(np.intp)


def _lerp(virtual: np.ndarray, lo: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``np.percentile``'s interpolation between the values ``a`` (rank ``lo``)
  and ``b`` (the next rank), float for float."""
  t = virtual - lo
  diff = b - a
  out = np.add(a, diff * t)
  np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5)
  return out


@dataclasses.dataclass(frozen=True)
class Percentiles:
  """p50 / p90 / p99 / mean of a sample (NaN when empty) and its size."""
  p50: float
  p90: float
  p99: float
  mean: float
  count: int

  @staticmethod
  def of(values: Iterable[float]) -> "Percentiles":
    return Percentiles.of_array(
        np.asarray([x for x in values if x is not None], dtype=np.float64))

  @staticmethod
  def of_array(v: np.ndarray) -> "Percentiles":
    """Of a 1-D float array (not changed): percentiles equal ``np.percentile``'s."""
    if v.size == 0:
      return Percentiles(math.nan, math.nan, math.nan, math.nan, 0)
    if np.isnan(v).any():
      p50, p90, p99 = np.percentile(v, [50, 90, 99])
    else:
      virtual, lo, hi = _linear_ranks(v.size)
      part = np.partition(v, sorted({*lo.tolist(), *hi.tolist()}))
      p50, p90, p99 = _lerp(virtual, lo, part[lo], part[hi])
    return Percentiles(float(p50), float(p90), float(p99), float(v.mean()), int(v.size))


@dataclasses.dataclass(frozen=True)
class Summary:
  """Run-level numbers; ``to_dict`` is the schema of summary.json."""
  submitted: int
  completed: int
  failed: int
  rejected: int
  wall_s: float
  ttft_s: Percentiles
  tbt_s: Percentiles
  itl_s: Percentiles
  e2e_s: Percentiles
  queue_s: Percentiles
  output_tokens: int
  transfer_bytes: int
  transfer_s: float

  def to_dict(self) -> dict:
    pct = lambda p: {k: getattr(p, k) for k in ("p50", "p90", "p99", "mean")}
    return {
        "requests": {"submitted": self.submitted, "completed": self.completed,
                     "failed": self.failed + self.rejected, "rejected": self.rejected},
        "wall_s": self.wall_s,
        "ttft_s": pct(self.ttft_s), "tbt_s": pct(self.tbt_s), "itl_s": pct(self.itl_s),
        "e2e_s": pct(self.e2e_s), "queue_s": pct(self.queue_s),
        "throughput": {
            "requests_per_s": self.completed / self.wall_s if self.wall_s > 0 else math.nan,
            "output_tokens_per_s": self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan,
        },
        "transfer": {"bytes": self.transfer_bytes, "seconds": self.transfer_s},
    }


def summarize(records: Sequence[RequestRecord], wall_s: float,
              itl: Percentiles | None = None) -> Summary:
  """Summary over ``records``; latency statistics use completed requests only.
  ``itl``: the gap statistics when records keep no token times (simulations).

  Raises ValueError if a request is still PENDING: every accepted request
  must end completed or failed with a reason.
  """
  statuses = [r.status for r in records]
  if RequestStatus.PENDING in statuses:
    pending = [r.request_id for r in records if r.status is RequestStatus.PENDING]
    raise ValueError(f"{len(pending)} requests never finished (e.g. ids {pending[:5]})")
  completed = RequestStatus.COMPLETED
  done = [r for r in records if r.status is completed]
  count = statuses.count
  return Summary(
      submitted=len(records), completed=len(done), failed=count(RequestStatus.FAILED),
      rejected=count(RequestStatus.REJECTED), wall_s=wall_s,
      ttft_s=Percentiles.of(r.ttft_s for r in done),
      tbt_s=Percentiles.of(r.tbt_s for r in done),
      itl_s=itl if itl is not None else Percentiles.of(g for r in done for g in r.itl_s),
      e2e_s=Percentiles.of(r.e2e_s for r in done),
      queue_s=Percentiles.of(r.queue_s for r in done),
      output_tokens=sum(r.tokens for r in done),
      transfer_bytes=sum(r.transfer_bytes for r in records),
      transfer_s=sum(r.transfer_s for r in records))


CSV_FIELDS = ("request_id", "status", "reason", "arrival_s", "prompt_tokens", "output_tokens",
              "generated_tokens", "queue_s", "ttft_s", "tbt_s", "e2e_s", "max_itl_s",
              "prompt_instance", "token_instance", "transfer_bytes", "transfer_s", "preemptions")


def write_requests_csv(records: Sequence[RequestRecord], path: str | os.PathLike) -> None:
  """One row per request (``CSV_FIELDS``); empty cells where undefined. The
  bytes ``csv.writer`` (default dialect) writes: floats as ``repr``, text quoted
  only where it must be."""
  with open(path, "w", newline="") as f:
    csv.writer(f).writerow(CSV_FIELDS)
    f.write("".join([
        f"{r.request_id},{_text(r.status.value)},{_text(r.reason)},{r.arrival_s!r},"
        f"{r.prompt_tokens},{r.output_tokens},{r.tokens},{_cell(r.queue_s)},"
        f"{_cell(r.ttft_s)},{_cell(r.tbt_s)},{_cell(r.e2e_s)},{_cell(r.max_itl_s)},"
        f"{_text(r.prompt_instance)},{_text(r.token_instance)},{r.transfer_bytes},"
        f"{r.transfer_s!r},{r.preemptions}\r\n" for r in records]))


_CSV_SPECIAL = frozenset(',"\r\n')


def _text(s: str) -> str:
  """A text cell as csv.writer's QUOTE_MINIMAL writes it."""
  if _CSV_SPECIAL.isdisjoint(s):
    return s
  return '"' + s.replace('"', '""') + '"'


def write_token_times_jsonl(records: Sequence[RequestRecord], path: str | os.PathLike) -> None:
  """One JSON line per request: ``{"request_id", "arrival_s", "token_times_s": [...],
  "token_ids": [...]}`` (absolute seconds on the run's clock and the ids of every
  emitted token; ids are empty where the driver computes none, e.g. simulations)."""
  import json
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps({"request_id": r.request_id, "arrival_s": r.arrival_s,
                          "token_times_s": r.token_times_s, "token_ids": r.token_ids}) + "\n")


def _cell(x: float | None) -> str:
  return "" if x is None else repr(x)


@dataclasses.dataclass(frozen=True)
class PoolSample:
  """Cluster occupancy at one instant (``t_s`` on the run's clock)."""
  t_s: float
  prompt_instances: int
  token_instances: int
  mixed_instances: int
  colocated_instances: int
  busy_instances: int
  queued_prompts: int
  queued_prompt_tokens: int
  transferring: int
  waiting_decode: int
  decoding: int
  kv_used_fraction: float       # KV tokens in use / capacity, whole cluster


def write_timeline_csv(samples: Sequence[PoolSample], path: str | os.PathLike) -> None:
  """One row per sample, columns = PoolSample fields."""
  fields = [f.name for f in dataclasses.fields(PoolSample)]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(fields)
    for s in samples:
      w.writerow([getattr(s, k) for k in fields])
