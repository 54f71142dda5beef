"""Our engine's prefill / decode times in the Splitwise simulator's profile schema.

``scripts/profile.py`` runs this on the current machine so that any hardware we
run on becomes a simulator profile. The schema is the header of the paper's
``perf_model.csv`` (:data:`COLUMNS`); times are milliseconds:

  prompt_time  wall time of one ``Engine.prefill`` of ``batch_size`` prompts of
               ``prompt_size`` random ids, blocked until ready (compiled before).
  token_time   mean wall time of one ``Engine.decode`` step (blocked each step)
               over ``token_size - 1`` steps after the batch was inserted into
               decode slots 0..batch_size-1; the first of the ``token_size``
               tokens comes from the prefill.
  e2e_time     prompt_time + (token_size - 1) * token_time: one request's end to
               end latency without queueing or KV transfer (the paper's rows fit
               this too, to within a token_time).
  peak_power, average_power
               left EMPTY: power cannot be measured on this machine (the paper
               gives fractions of the machine's peak power); no number is made up.

One row per repeat, like the paper's file. Pure planning and CSV code here has
no jax; :class:`Profiler` imports it lazily.

Contention: given ``concurrent`` replicas (on other meshes of the same machine),
the profiler runs every prefill and every decode step on all replicas at once and
times until all of them are done. On CPU hosts where virtual devices share the
cores, that is what an instance pays while others are busy.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence, TextIO

if TYPE_CHECKING:
  from splitjax.engine.engine import Engine
  from splitjax.model.params import Params

COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "peak_power",
           "average_power", "prompt_time", "token_time", "e2e_time", "tensor_parallel")


def parse_sizes(items: Iterable[str], what: str) -> tuple[int, ...]:
  """['128', '512'] -> (128, 512), sorted, duplicates dropped.

  Raises ValueError naming the flag ``what`` and the bad item.
  """
  items = [str(t).strip() for t in items]
  if not items or items == [""]:
    raise ValueError(f"{what}: empty list (give comma-separated positive integers)")
  out = set()
  for i, t in enumerate(items):
    try:
      v = int(t)
    except ValueError:
      raise ValueError(f"{what}: item {i} {t!r} is not an integer") from None
    if v <= 0:
      raise ValueError(f"{what}: item {i} ({v}) must be positive")
    out.add(v)
  return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class Combo:
  """One profiled point: ``batch_size`` prompts of ``prompt_size`` tokens,
  padded by the engine to ``bucket`` tokens (the length actually computed)."""
  prompt_size: int
  batch_size: int
  bucket: int

  @property
  def batch_tokens(self) -> int:
    return self.prompt_size * self.batch_size


@dataclasses.dataclass(frozen=True)
class Skipped:
  prompt_size: int
  batch_size: int
  reason: str


def plan(prompt_sizes: Iterable[int], batch_sizes: Iterable[int], token_size: int, *,
         max_batch_tokens: int, buckets: tuple[int, ...], max_cache_len: int
         ) -> tuple[list[Combo], list[Skipped]]:
  """The (prompt, batch) grid split into combos to run and skipped ones (with why).

  A combo is skipped when batch x prompt tokens exceed ``max_batch_tokens``,
  the prompt exceeds the largest prefill bucket, or prompt + ``token_size``
  positions exceed the decode cache (``max_cache_len`` positions per slot).
  """
  run, skipped = [], []
  for p in prompt_sizes:
    fits = [b for b in buckets if b >= p]
    for b in batch_sizes:
      if not fits:
        why = f"prompt exceeds the largest prefill bucket ({buckets[-1]})"
      elif p + token_size > max_cache_len:
        why = (f"prompt + {token_size} tokens exceed the decode cache "
               f"({max_cache_len} positions; raise --config.engine.max_cache_len)")
      elif p * b > max_batch_tokens:
        why = f"{p * b} batch tokens exceed --max_batch_tokens={max_batch_tokens}"
      else:
        run.append(Combo(p, b, min(fits[0], max_cache_len)))
        continue
      skipped.append(Skipped(p, b, why))
  return run, skipped


@dataclasses.dataclass(frozen=True)
class ProfileRow:
  """One repeat of one combo (times in milliseconds)."""
  model: str
  hardware: str
  prompt_size: int
  batch_size: int
  token_size: int
  prompt_time: float
  token_time: float
  tensor_parallel: int

  @property
  def e2e_time(self) -> float:
    """prompt_time + (token_size - 1) * token_time, ms (see module doc)."""
    return self.prompt_time + (self.token_size - 1) * self.token_time

  def to_csv(self) -> dict:
    """The row keyed by :data:`COLUMNS`; power fields are empty (not measured)."""
    d = dataclasses.asdict(self) | dict(e2e_time=self.e2e_time, peak_power="",
                                         average_power="")
    return {c: d[c] for c in COLUMNS}


class ProfileWriter:
  """Writes the header at once and flushes every row, so an interrupted run
  keeps the rows measured so far. Creating the directory may raise OSError."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file: TextIO = self.path.open("w", newline="")
    self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
    self._csv.writeheader()
    self._file.flush()

  def write(self, row: ProfileRow) -> None:
    self._csv.writerow(row.to_csv())
    self._file.flush()

  def close(self) -> None:
    self._file.close()


@dataclasses.dataclass(frozen=True)
class ProfileReplica:
  """One model replica the profiler drives: the engine that prefills, the
  engine whose decode slots a batch of a given size goes into (same mesh, at
  least that many slots), and the weights placed on that mesh."""
  prefill_engine: "Engine"
  decode_engine_for: Callable[[int], "Engine"]
  params: "Params"


class Profiler:
  """Times prefill and decode of one model replica on one mesh.

  ``prefill_engine`` runs the prompts; ``decode_engine_for(batch_size)`` gives
  the engine whose slots the batch is inserted into (it must share the mesh
  and have at least ``batch_size`` slots). ``layerwise(prompt_size)`` says
  whether a prefill runs as the layer-group chain. ``concurrent`` replicas (on
  other meshes) run the same work at the same time; a time is then until every
  replica has finished (lockstep: each program is dispatched on all replicas,
  then all are awaited).
  """

  def __init__(self, prefill_engine: "Engine", decode_engine_for, params: "Params", *,
               layerwise=lambda prompt_size: False, seed: int = 0,
               concurrent: Sequence[ProfileReplica] = ()):
    import jax
    import numpy as np
    self.engine, self.decode_engine_for, self.params = prefill_engine, decode_engine_for, params
    self.replicas = [ProfileReplica(prefill_engine, decode_engine_for, params), *concurrent]
    self.layerwise = layerwise
    self.rng = np.random.default_rng(seed)
    self.key = jax.random.key(seed)
    self._states: dict = {}

  def measure(self, combo: Combo, token_size: int, repeats: int) -> list[tuple[float, float]]:
    """[(prompt_time ms, token_time ms)] per repeat, after one discarded warm-up
    run (which compiles every program involved)."""
    vocab = self.engine.model.vocab_size
    prompts = list(self.rng.integers(0, vocab, size=(combo.batch_size, combo.prompt_size)))
    batches = [r.prefill_engine.make_batch(prompts, batch_size=combo.batch_size)
               for r in self.replicas]
    lw = self.layerwise(combo.prompt_size)
    self._once(batches, combo.batch_size, min(token_size - 1, 2), lw)
    return [self._once(batches, combo.batch_size, token_size - 1, lw) for _ in range(repeats)]

  def _once(self, batches, batch_size: int, steps: int, layerwise: bool) -> tuple[float, float]:
    """One prefill, insert into slots [0, batch_size), ``steps`` decode steps,
    release, on every replica at once. Returns (prefill ms, mean ms per decode
    step), each until the last replica is done."""
    import jax
    reps = self.replicas
    engs = [r.decode_engine_for(batch_size) for r in reps]
    states = [self._states.pop(id(e), None) for e in engs]
    states = [e.init_decode_state() if s is None else s for e, s in zip(engs, states)]
    t0 = time.perf_counter()
    prefixes = [r.prefill_engine.prefill(r.params, b, self.key, layerwise=layerwise)
                for r, b in zip(reps, batches)]
    jax.block_until_ready(prefixes)
    prompt_ms = (time.perf_counter() - t0) * 1e3
    for i, (eng, prefix) in enumerate(zip(engs, prefixes)):
      for slot in range(batch_size):
        states[i] = eng.insert(prefix, states[i], slot, slot)
    jax.block_until_ready(states)
    step_s = []
    for _ in range(steps):
      t0 = time.perf_counter()
      tokens = []
      for i, (eng, r) in enumerate(zip(engs, reps)):
        states[i], tok = eng.decode(r.params, states[i], self.key)
        tokens.append(tok)
      jax.block_until_ready(tokens)
      step_s.append(time.perf_counter() - t0)
    for i, eng in enumerate(engs):
      for slot in range(batch_size):
        states[i] = eng.release(states[i], slot)
      self._states[id(eng)] = states[i]
    return prompt_ms, sum(step_s) / len(step_s) * 1e3
