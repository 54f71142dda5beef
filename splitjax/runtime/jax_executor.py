"""The real executor: Work runs as compiled engine programs on device meshes.

Every instance is a :class:`Replica`: one ``Engine`` on its own mesh, its
parameters, its donated ``DecodeState`` and a PRNG key. ``launch`` only
dispatches (JAX runs programs asynchronously); ``poll`` checks readiness
with ``jax.Array.is_ready`` and turns finished programs into events. The
single driver thread therefore never blocks on a device, and the programs
of all instances run concurrently.

KV moves per request: its row of the prefill output is sliced on the prompt
mesh group by group and ``device_put`` to its token instance's mesh in the
canonical layout (``transfer.to_engine``). The copies are dispatched with the
prefill, so each starts as soon as its data exists, without waiting for the
host to notice: with a layer-wise prefill (a chain of layer-group programs,
chosen per the cluster's ``TransferMode``) a group's copy overlaps the later
groups; with a single-program prefill all copies start when it ends
(serialized).

Faults (see ``runtime.faults``): ``fail_instance`` drops an instance's
programs in flight and every transfer from or to it (the device work itself
runs on, ignored); ``transfer_faults`` makes transfers fail as they land
(TransferFailed), keeping the prefill output so ``retry_transfer`` can send
the row again. State is keyed by Request object (one attempt of a request),
so a resubmitted request never collides with its earlier attempt.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from splitjax import transfer
from splitjax.config import SamplingConfig, TransferMode
from splitjax.engine.chunked import ChunkSpec
from splitjax.engine.engine import Engine, PromptError
from splitjax.engine.types import DecodeState, KVLayoutError, Prefix
from splitjax.model.params import Params
from splitjax.runtime.executor import (Event, TransferDone, TransferFailed, WorkDone, WorkFailed,
                                       resumed_ids)
from splitjax.runtime.faults import TransferFaults
from splitjax.scheduling.records import Request, Work, WorkKind


@dataclasses.dataclass(eq=False)
class Replica:
  """One instance's device side. ``slot_of``: request -> active decode slot;
  ``arrived``: request -> (prefix on this mesh, row) waiting for insert."""
  name: str
  engine: Engine
  params: Params
  state: DecodeState
  key: jax.Array
  steps: int = 0
  slot_of: dict = dataclasses.field(default_factory=dict)
  arrived: dict = dataclasses.field(default_factory=dict)

  def next_key(self) -> jax.Array:
    self.steps += 1
    return jax.random.fold_in(self.key, self.steps)


@dataclasses.dataclass(eq=False)
class _Flight:
  """A dispatched Work: ``ready`` is its last output; ``read`` maps the host
  copy of the token arrays to {request id: token}."""
  work: Work
  ready: jax.Array
  read: Callable[[], dict]
  prefix: Prefix | None = None
  rows: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class _Transfer:
  flight: _Flight      # the prefill that produced the KV
  request: Request
  dst: Replica
  prefix: Prefix       # one row, on dst's mesh (possibly still in flight)


class JaxExecutor:
  """Runs Work on replicas; see the module docstring.

  prompt_ids(request) -> the request's original prompt token ids (a resumed
    request's emitted tokens are appended from ``resume``).
  sampling(request) -> its SamplingConfig (None: every request greedy); applied
    to the first token (prefill / last chunk) and carried into the decode slot.
  poll_s: how long the driver sleeps between readiness polls while busy.
  transfer_faults: which transfers to fail (tests; none by default).
  """

  def __init__(self, replicas: list[Replica], prompt_ids: Callable[[Request], list[int]],
               transfer_mode: TransferMode = TransferMode.AUTO, poll_s: float = 0.002,
               sampling: Callable[[Request], SamplingConfig] | None = None,
               transfer_faults: TransferFaults | None = None):
    self.replicas = {r.name: r for r in replicas}
    self.prompt_ids, self.mode, self.poll_s = prompt_ids, transfer_mode, poll_s
    self.sampling = sampling
    self.transfer_faults = transfer_faults or TransferFaults()
    self._flights: list[_Flight] = []
    self._transfers: list[_Transfer] = []
    self._failed: list[Event] = []
    self._resumed: dict[Request, list[int]] = {}     # request -> emitted ids to append
    self._sources: dict[Request, _Flight] = {}       # failed transfers: the prefill output

  @property
  def busy(self) -> bool:
    return bool(self._flights or self._transfers or self._failed)

  def next_event_s(self, now: float) -> float | None:
    return now + self.poll_s if self.busy else None

  # ------------------------------------------------------------------ launch
  def launch(self, work: Work, now: float) -> None:
    rep = self.replicas[work.instance.name]
    try:
      if work.kind == WorkKind.PREFILL:
        flight = self._launch_prefill(rep, work)
      else:
        flight = self._launch_step(rep, work)
    except (PromptError, KVLayoutError) as e:
      self._failed.append(WorkFailed(work, now, f"{type(e).__name__}: {e}"))
      return
    self._flights.append(flight)

  def _launch_prefill(self, rep: Replica, work: Work) -> _Flight:
    eng = rep.engine
    prompts = [self._prompt(r) for r in work.prefill]
    sampling = [self.sampling(r) for r in work.prefill] if self.sampling else None
    batch = eng.make_batch(prompts, sampling)
    layerwise = bool(work.transfers) and transfer.use_layerwise(
        self.mode, max(len(p) for p in prompts), eng.cfg.layerwise_min_tokens)
    prefix = eng.prefill(rep.params, batch, rep.next_key(), layerwise=layerwise)
    rows = {r.request_id: i for i, r in enumerate(work.prefill)}
    for r in work.prefill:
      if r.token_instance == rep.name and r.output_tokens > 1:
        rep.state = eng.insert(prefix, rep.state, rows[r.request_id], r.slot)
        rep.slot_of[r] = r.slot
    first = prefix.first_token_B
    flight = _Flight(work, first, lambda: _by_row(np.asarray(first), rows), prefix, rows)
    for r in work.transfers:   # dispatched now; each copy starts when its data is ready
      self._start_transfer(flight, r)
    return flight

  def _start_transfer(self, flight: _Flight, r: Request) -> None:
    dst = self.replicas[r.token_instance]
    one = transfer.row_prefix(flight.prefix, flight.rows[r.request_id])
    self._transfers.append(_Transfer(flight, r, dst, transfer.to_engine(one, dst.engine)))

  def _launch_step(self, rep: Replica, work: Work) -> _Flight:
    eng = rep.engine
    for r in work.admitted:
      prefix, row = rep.arrived.pop(r)
      rep.state = eng.insert(prefix, rep.state, row, r.slot)
      rep.slot_of[r] = r.slot
    slots = {r.request_id: r.slot for r in work.decode}
    if work.kind == WorkKind.DECODE:
      rep.state, tok = eng.decode(rep.params, rep.state, rep.next_key())
      return _Flight(work, tok, lambda: _by_row(np.asarray(tok), slots))
    specs, last_rows = [], {}
    for c in work.chunks:
      r = c.request
      ids = self._prompt(r)[c.start:c.end]
      if c.last:
        last_rows[r.request_id] = len(specs)
      sp = self.sampling(r) if self.sampling and c.last else None
      specs.append(ChunkSpec(slot=r.slot, tokens=ids, start=c.start, last=c.last, sampling=sp))
    chunks = eng.make_chunks(specs)
    rep.state, tok, first = eng.mixed_step(rep.params, rep.state, chunks, rep.next_key())
    for c in work.chunks:
      if c.last:   # active on the device now (released again if already done)
        rep.slot_of[c.request] = c.request.slot

    def read():
      return _by_row(np.asarray(tok), slots) | _by_row(np.asarray(first), last_rows)
    return _Flight(work, first, read)

  # ------------------------------------------------------------------ poll
  def poll(self, now: float) -> list[Event]:
    events, self._failed = self._failed, []
    still = []
    for f in self._flights:
      if f.ready.is_ready():
        events.append(WorkDone(f.work, now, f.read()))
      else:
        still.append(f)
    self._flights = still
    keep = []
    for t in self._transfers:   # reported only after their prefill was
      if t.flight not in self._flights and all(a.is_ready() for a in jax.tree.leaves(t.prefix)):
        if self.transfer_faults.take(t.request.request_id):
          self._sources[t.request] = t.flight
          events.append(TransferFailed(t.request, now, "injected transfer failure"))
        else:
          t.dst.arrived[t.request] = (t.prefix, 0)
          events.append(TransferDone(t.request, now, t.prefix.kv_nbytes))
      else:
        keep.append(t)
    self._transfers = keep
    return events

  def release(self, request: Request) -> None:
    """Drops the request's decode slot, arrived KV, pending transfers (so no
    TransferDone follows; a copy already in flight is simply discarded), a
    failed transfer's prefill output and its resumed ids."""
    self._transfers = [t for t in self._transfers if t.request is not request]
    self._resumed.pop(request, None)
    self._sources.pop(request, None)
    for rep in self.replicas.values():
      rep.arrived.pop(request, None)
      slot = rep.slot_of.pop(request, None)
      if slot is not None:
        rep.state = rep.engine.release(rep.state, slot)

  # ------------------------------------------------------------------ faults
  def fail_instance(self, name: str) -> None:
    """Forgets ``name``'s programs in flight, its failed-work events and every
    transfer from or to it (no events follow); its replica is never used again."""
    on = lambda f: f.work.instance.name == name
    self._flights = [f for f in self._flights if not on(f)]
    self._failed = [e for e in self._failed if not (isinstance(e, WorkFailed) and on(e))]
    self._transfers = [t for t in self._transfers if not (on(t.flight) or t.dst.name == name)]
    self._sources = {r: f for r, f in self._sources.items()
                     if not (on(f) or r.token_instance == name)}
    rep = self.replicas[name]
    rep.slot_of.clear()
    rep.arrived.clear()

  def resume(self, request: Request, emitted: Sequence[int]) -> None:
    self._resumed[request] = resumed_ids(request, emitted)

  def retry_transfer(self, request: Request, now: float) -> None:
    self._start_transfer(self._sources.pop(request), request)

  def _prompt(self, r: Request) -> list[int]:
    """The prompt ids ``r`` prefills: the original ones, then any resumed tokens."""
    ids = list(self.prompt_ids(r))
    if r.resumed:
      ids += self._resumed[r]
    return ids


def _by_row(host: np.ndarray, rows: dict) -> dict:
  return {rid: int(host[i]) for rid, i in rows.items()}
