"""Workloads: the Azure LLM inference traces and synthetic arrivals.

Pure Python + numpy (no jax): the real runtime and the simulator both consume
the same :class:`RequestSpec` lists. As in the Splitwise paper, a request is
its arrival time and its prompt / output lengths; prompt token ids are random
(:func:`prompt_token_ids`) and generation is forced to the given length.

Trace CSV schema (Azure LLM inference dataset 2023):
``TIMESTAMP,ContextTokens,GeneratedTokens`` with timestamps like
``2023-11-16 18:15:46.6805900``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import operator
import os
from pathlib import Path
from typing import Sequence

import numpy as np

TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


class TraceError(ValueError):
  """A trace file is missing, has the wrong columns, or a malformed line."""


class ArrivalProcess(enum.Enum):
  """Inter-arrival distribution of synthetic workloads."""
  POISSON = "poisson"   # exponential gaps, coefficient of variation 1
  GAMMA = "gamma"       # gamma gaps with a chosen coefficient of variation (burstiness)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestSpec:
  """One request: arrival (seconds from the workload start) and token counts."""
  request_id: int
  arrival_s: float
  prompt_tokens: int
  output_tokens: int


def _parse_time(text: str) -> dt.datetime:
  return dt.datetime.fromisoformat(text.strip())


def read_azure_trace(path: str | os.PathLike) -> list[RequestSpec]:
  """Reads a whole trace; arrivals relative to its first request, sorted.

  Raises TraceError naming the file and line of any malformed row.
  """
  path = Path(path)
  if not path.is_file():
    raise TraceError(f"trace file {str(path)!r} does not exist")
  rows: list[tuple[dt.datetime, int, int]] = []
  with path.open(newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != TRACE_COLUMNS:
      raise TraceError(f"{path}:1: expected header {','.join(TRACE_COLUMNS)}, got {header}")
    for line, row in enumerate(reader, start=2):
      if not "".join(row).strip():                  # an empty or all-blank row
        continue
      if len(row) != 3:
        raise TraceError(f"{path}:{line}: expected 3 fields, got {len(row)}: {row}")
      try:
        ts = _parse_time(row[0])
        prompt, output = int(row[1]), int(row[2])
      except ValueError as e:
        raise TraceError(f"{path}:{line}: malformed row {row}: {e}") from None
      if prompt <= 0 or output <= 0:
        raise TraceError(f"{path}:{line}: token counts must be positive, got {row}")
      rows.append((ts, prompt, output))
  if not rows:
    raise TraceError(f"{path}: no requests")
  rows.sort(key=operator.itemgetter(0))
  t0 = rows[0][0]
  return [RequestSpec(i, (ts - t0).total_seconds(), p, o) for i, (ts, p, o) in enumerate(rows)]


def select(specs: Sequence[RequestSpec], *, start_s: float = 0.0, duration_s: float | None = None,
           rate_scale: float = 1.0, max_requests: int | None = None,
           max_context: int | None = None) -> list[RequestSpec]:
  """A window of a workload, rescaled and capped; ids and arrivals renumbered.

  start_s, duration_s: keep requests arriving in [start_s, start_s + duration_s).
  rate_scale: >1 compresses arrivals (rate x rate_scale), <1 stretches them.
  max_requests: keep at most this many (the earliest).
  max_context: cap prompt + output to fit a model's context: the prompt is cut
    to at most max_context - 1 tokens, then the output to what remains.
  """
  if rate_scale <= 0:
    raise ValueError(f"rate_scale must be positive, got {rate_scale}")
  if max_context is not None and max_context < 2:
    raise ValueError(f"max_context must be at least 2, got {max_context}")
  end = float("inf") if duration_s is None else start_s + duration_s
  kept = [s for s in specs if start_s <= s.arrival_s < end][:max_requests]
  out = []
  for i, s in enumerate(kept):
    prompt, output = s.prompt_tokens, s.output_tokens
    if max_context is not None:
      prompt = min(prompt, max_context - 1)
      output = min(output, max_context - prompt)
    arrival = (s.arrival_s - start_s) / rate_scale
    same = (i, arrival, prompt, output) == (s.request_id, s.arrival_s, s.prompt_tokens,
                                            s.output_tokens)
    out.append(s if same else RequestSpec(i, arrival, prompt, output))   # specs are frozen
  return out


def load_azure_trace(path: str | os.PathLike, **select_kw) -> list[RequestSpec]:
  """:func:`read_azure_trace` then :func:`select` with ``select_kw``."""
  return select(read_azure_trace(path), **select_kw)


def synthetic(rate_per_s: float, num_requests: int, lengths_from: Sequence[RequestSpec], *,
              process: ArrivalProcess = ArrivalProcess.POISSON, cv: float = 1.0,
              seed: int = 0, duration_s: float | None = None) -> list[RequestSpec]:
  """``num_requests`` arrivals at mean ``rate_per_s`` (the first at 0 s); (prompt,
  output) pairs drawn jointly, with replacement, from ``lengths_from`` (e.g. a
  trace). With ``duration_s``, every arrival before ``duration_s`` instead
  (``num_requests`` is ignored).

  GAMMA uses coefficient of variation ``cv`` for the gaps (cv > 1 is burstier
  than Poisson); POISSON ignores ``cv``.
  """
  if rate_per_s <= 0 or (num_requests <= 0 and duration_s is None):
    raise ValueError("rate_per_s and num_requests must be positive")
  if duration_s is not None and duration_s <= 0:
    raise ValueError(f"duration_s must be positive, got {duration_s}")
  if not lengths_from:
    raise ValueError("lengths_from is empty")
  if process != ArrivalProcess.POISSON and cv <= 0:
    raise ValueError(f"cv must be positive, got {cv}")
  rng = np.random.default_rng(seed)
  if duration_s is not None:      # enough gaps to pass duration_s (mean + 10 sigma)
    mean = rate_per_s * duration_s
    num_requests = int(mean + 10 * max(cv, 1.0) * np.sqrt(mean) + 10)
  if process == ArrivalProcess.POISSON:
    gaps = rng.exponential(1.0 / rate_per_s, num_requests)
  else:
    shape = 1.0 / cv ** 2
    gaps = rng.gamma(shape, 1.0 / (rate_per_s * shape), num_requests)
  arrivals = np.cumsum(gaps) - gaps[0]
  if duration_s is not None:
    arrivals = arrivals[arrivals < duration_s]
    num_requests = len(arrivals)
  picks = rng.integers(0, len(lengths_from), num_requests)
  sizes = [(s.prompt_tokens, s.output_tokens) for s in lengths_from]
  return [RequestSpec(i, a, *sizes[j])
          for i, (a, j) in enumerate(zip(arrivals.tolist(), picks.tolist()))]


def prompt_token_ids(spec: RequestSpec, vocab_size: int, seed: int = 0) -> list[int]:
  """Deterministic random prompt ids for ``spec`` (same on every run and host)."""
  rng = np.random.default_rng([seed, spec.request_id])
  return rng.integers(0, vocab_size, spec.prompt_tokens).tolist()


def shared_trace_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
  """Path of ``AzureLLMInferenceTrace_{name}.csv`` (name: code | conv).

  ``data_dir`` defaults to ``../shared/data`` next to the repository.
  """
  if data_dir is None:
    data_dir = Path(__file__).resolve().parents[2] / "shared" / "data"
  return Path(data_dir) / "azure-llm-2023" / f"AzureLLMInferenceTrace_{name}.csv"


def _trace_path(cfg) -> Path:
  return Path(cfg.trace) if cfg.trace.endswith(".csv") else shared_trace_path(
      cfg.trace, cfg.data_dir or None)


def trace_window(cfg) -> list[RequestSpec]:
  """The trace requests a ``serve_config.WorkloadConfig`` replays or resamples:
  its window (``source`` TRACE) or the whole trace (synthetic sources). A
  function of the trace file and the window fields only (not ``rate``,
  ``rate_duration_s``, ``seed`` nor the length caps).

  Raises TraceError for a missing or malformed trace (naming file and line).
  """
  from splitjax.serve_config import WorkloadSource   # serve_config is plain Python
  trace = read_azure_trace(_trace_path(cfg))
  if cfg.source != WorkloadSource.TRACE:
    return trace
  return select(trace, start_s=cfg.start_s, duration_s=cfg.duration_s or None,
                rate_scale=cfg.rate_scale, max_requests=cfg.max_requests or None)


def build(cfg, max_context: int,
          window: Sequence[RequestSpec] | None = None) -> list[RequestSpec]:
  """The workload a ``serve_config.WorkloadConfig`` describes, lengths capped to
  ``max_context`` (prompt + output) and to the config's own caps. ``window``:
  :func:`trace_window` of ``cfg`` if the caller has it already (e.g. kept for
  many workloads of one trace window); read here if None.

  Raises TraceError for a missing or malformed trace (naming file and line).
  """
  from splitjax.serve_config import WorkloadSource   # serve_config is plain Python
  window = trace_window(cfg) if window is None else window
  if cfg.source == WorkloadSource.TRACE:
    specs = window
    if cfg.rate > 0:
      if not specs:
        raise TraceError(f"{_trace_path(cfg)}: no requests in the window to resample sizes "
                         f"from")
      specs = synthetic(cfg.rate, len(specs), specs, seed=cfg.seed,
                        duration_s=cfg.rate_duration_s or None)
  else:
    process = ArrivalProcess(cfg.source.value)
    specs = synthetic(cfg.rate_per_s, cfg.max_requests or cfg.num_requests, window,
                      process=process, cv=cfg.cv, seed=cfg.seed)
  out = []
  for s in specs:
    prompt = min(s.prompt_tokens, cfg.max_prompt_tokens or s.prompt_tokens, max_context - 1)
    output = min(s.output_tokens, cfg.max_output_tokens or s.output_tokens, max_context - prompt)
    out.append(s if (prompt, output) == (s.prompt_tokens, s.output_tokens) else
               RequestSpec(s.request_id, s.arrival_s, prompt, output))
  return out
