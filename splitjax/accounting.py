"""Energy (joules) and cost (US dollars) of a run: per instance, per request, per run.

Pure Python + numpy, no jax. Drivers report every finished iteration to an
:class:`EnergyLedger` (a work observer: ``ledger.observe(instance_index, work, start_s,
end_s)``, or ``observe_works`` for a batch of them); the power and price of each instance are given as
:class:`InstanceRates`. :meth:`EnergyLedger.account` turns the iterations, the
run's length and the request records into a :class:`RunAccount` (records in
:mod:`splitjax.accounts`).

Rules (all times in seconds on the driver's clock, the run is ``[0, run_s)``):

- Time. An instance runs one iteration at a time; each iteration is PREFILL,
  DECODE or MIXED (``WorkKind``) and is busy time of that phase. Idle time is
  the length of the gaps between an instance's iterations (before the first,
  between, after the last), so busy + idle == run_s holds only if no two
  iterations of an instance overlap and none runs past the run: the
  conservation tests check exactly that.
- Energy. Busy phase seconds x the instance's power in that phase, plus idle
  seconds x its idle power. Machine power per phase already covers the whole
  machine (devices, host, NICs), so KV transfers add no energy: they overlap
  compute or idle time on both sides and are reported as a separate,
  network-side quantity (bytes sent / received and the exposed seconds of the
  sends, from the request records).
- Cost. Machines are paid for the whole run, idle or not:
  cost = run_s / 3600 x price per hour. The busy part of it (iteration seconds
  x price per second) is what requests are charged; the idle part stays with
  the run.
- Per request. An iteration's energy and busy cost are split among the requests
  in it by the tokens each one had processed in it: its prompt tokens for a
  prefill row, the chunk's length for a prompt chunk, one token per step for a
  decode row (a decode leap of ``work.steps`` steps gives each row ``steps``
  tokens). So per-request energies add up to the cluster's energy minus idle
  energy, and per-request costs to the busy cost. An iteration with no rows
  (none in the drivers here) is reported as unattributed.
- Power over time. Cluster draw = every instance's idle power plus, while it
  runs an iteration, the difference to that phase's power. The instantaneous
  peak comes from a sweep over iteration starts and ends; the series holds the
  mean draw per window.

In the simulator (:func:`simulator_ledger`) an instance's power per phase is its
perf model's ``power_w(Phase)``: measured profile power where the profile has
it, otherwise rated-power fractions (``splitjax.sim.hardware.PhasePower``:
prefill / mixed 1.0, decode 0.45, idle 0.15 of machine power, bounded by the
machine's power cap). The idle fraction 0.15 is an assumption (about 60 W of a
400 W A100, 100 W of a 700 W H100, host included in proportion); no profile
measures idle power. Price: the catalog's ``cost_per_hour_usd`` x the share of
the machine's devices the instance uses.
"""

from __future__ import annotations

import array
import math
from typing import Mapping, Sequence

import numpy as np

from splitjax.accounts import (KINDS, SECONDS_PER_HOUR, InstanceAccount, InstanceRates,
                               PowerDraw, RequestAccounts, RunAccount, _KIND_COLUMN)
from splitjax.metrics import RequestRecord, RequestStatus
from splitjax.scheduling.records import Instance, Work
from splitjax.sim.hardware import Hardware
from splitjax.sim.perf_model import PerfModel, Phase, ProfilePerfModel
from splitjax.sim.roofline import RooflineModel

class EnergyLedger:
  """Iterations of ``instances`` (their order gives the observer's index), with
  each instance's power and price in ``rates`` (same order). ``observe`` (also
  the ledger itself) is a work observer: it buffers ``(index, work, start,
  end)``; every ``_FLUSH`` iterations (and before any read) the buffer becomes
  typed arrays: a code, start and end per iteration; per kind of row (whole
  prompts, prompt chunks, decode rows) a count per iteration and an id per row,
  with a token count per row (prompts, chunks) or per iteration (decode steps). A buffered Work must not change after it was observed
  (drivers report finished works)."""

  _FLUSH = 4096
  _BLOCK_ROWS = 1 << 22      # rows per block when accounting requests

  def __init__(self, instances: Sequence[Instance], rates: Sequence[InstanceRates]):
    if len(instances) != len(rates):
      raise ValueError(f"{len(instances)} instances but {len(rates)} rates")
    self.names = [i.name for i in instances]
    self.homes = [i.home for i in instances]
    self.rates = list(rates)
    self._codes, self._starts, self._ends = array.array("q"), array.array("d"), array.array("d")
    # Per kind of row (prefill, chunk, decode): rows per iteration, request id
    # per row, and tokens per row (decode rows: steps per iteration, the same
    # for each of its rows).
    self._rows = tuple(tuple(array.array("q") for _ in range(3)) for _ in range(3))
    self._buffer: list[tuple[int, Work, float, float]] = []

  def observe(self, index: int, work: Work, start_s: float, end_s: float) -> None:
    """Instance ``index`` ran ``work`` from ``start_s`` to ``end_s`` (a work
    observer; one append, the arrays grow in bulk)."""
    buffer = self._buffer
    buffer.append((index, work, start_s, end_s))
    if len(buffer) >= self._FLUSH:
      self._flush()

  __call__ = observe

  def observe_works(self, works: Sequence[tuple[int, Work, float, float]]) -> None:
    """:meth:`observe` for each ``(index, work, start_s, end_s)`` of ``works``
    (the simulator's batched work observer, ``Simulator.work_observers``)."""
    buffer = self._buffer
    buffer.extend(works)
    if len(buffer) >= self._FLUSH:
      self._flush()

  def _flush(self) -> None:
    """Moves the buffered iterations into the arrays (one pass per column)."""
    buffer, column = self._buffer, _KIND_COLUMN
    self._codes.extend([index * 3 + column[work.kind] for index, work, _, _ in buffer])
    self._starts.extend([start for _, _, start, _ in buffer])
    self._ends.extend([end for _, _, _, end in buffer])
    works = [work for _, work, _, _ in buffer]
    (pc, pi, pt), (cc, ci, ct), (dc, di, dt) = self._rows
    pc.extend([len(w.prefill) for w in works])            # whole prompts: prompt tokens
    pi.extend([r.request_id for w in works for r in w.prefill])
    pt.extend([r.prompt_tokens for w in works for r in w.prefill])
    cc.extend([len(w.chunks) for w in works])             # chunks: chunk tokens
    ci.extend([c.request.request_id for w in works for c in w.chunks])
    ct.extend([c.end - c.start for w in works for c in w.chunks])
    dc.extend([len(w.decode) for w in works])             # decode rows: one token per step
    di.extend([r.request_id for w in works for r in w.decode])
    dt.extend([w.steps for w in works])                 # per iteration: its rows' tokens
    buffer.clear()

  @property
  def iterations(self) -> int:
    return len(self._codes) + len(self._buffer)

  def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (instance x 3 + phase column), starts, ends: copies, so that no
    numpy view pins the buffers and the ledger can keep growing."""
    self._flush()
    return (np.array(self._codes, np.int64), np.array(self._starts, np.float64),
            np.array(self._ends, np.float64))

  def account(self, run_s: float, records: Sequence[RequestRecord] = (), *,
              window_s: float = 1.0, power_budget_w: float | None = None,
              max_points: int = 120) -> RunAccount:
    """Accounts of the run ``[0, run_s)``. ``records`` give the per-1k / per-1M
    normalizers and the KV transfers; ``window_s``: the finest power window,
    coarsened (whole windows merged) to at most ``max_points`` values."""
    codes, starts, ends = self._arrays()
    if len(ends) and (ends.max() > run_s * (1 + 1e-12) or starts.min() < 0
                      or (ends < starts).any()):
      raise ValueError(f"iterations must lie in [0, run_s={run_s}] with end >= start")
    if window_s <= 0 or max_points < 1:
      raise ValueError("window_s must be positive and max_points >= 1")
    busy_w = np.array([r.busy_w for r in self.rates], np.float64).reshape(-1)
    usd_per_s = np.repeat([r.usd_per_hour / SECONDS_PER_HOUR for r in self.rates], 3)
    seconds = ends - starts
    energy, cost = busy_w[codes] * seconds, usd_per_s[codes] * seconds
    requests, unattributed = self._requests(codes, energy, cost)
    instances = self._instances(codes, starts, ends, run_s, records)
    done = [r for r in records if r.status == RequestStatus.COMPLETED]
    power = _power_draw(self.rates, codes, starts, ends, run_s, window_s, power_budget_w,
                        max_points)
    return RunAccount(run_s, instances, requests, power, len(done),
                      sum(r.tokens for r in done), *unattributed)

  def _requests(self, codes, energy, cost) -> tuple[RequestAccounts, tuple[float, float]]:
    """Each iteration's energy and cost split over its rows by tokens. Rows are
    read in blocks of iterations (three passes), so memory stays O(block)
    above the ledger's own arrays (a million-request run has ~10^8 rows)."""
    self._flush()
    n = len(codes)
    per_iter = np.zeros(n)
    for a, b, it, _, tokens in self._row_blocks(n):
      per_iter[a:b] += np.bincount(it - a, weights=tokens, minlength=b - a)
    empty = per_iter <= 0
    divisor, kind = np.where(empty, 1.0, per_iter), codes % 3
    uniq = np.unique(np.concatenate(
        [np.zeros(0, np.int64)] + [np.unique(ids) for _, _, _, ids, _ in self._row_blocks(n)]))
    dense = len(uniq) == 0 or uniq[-1] <= 4 * len(uniq)     # ids index the sums directly
    size = 3 * (int(uniq[-1]) + 1 if dense and len(uniq) else len(uniq))
    e, c = np.zeros(size), np.zeros(size)
    for _, _, it, ids, tokens in self._row_blocks(n):
      col = (ids if dense else np.searchsorted(uniq, ids)) * 3 + kind[it]
      weight = tokens / divisor[it]
      e += np.bincount(col, weights=energy[it] * weight, minlength=size)
      c += np.bincount(col, weights=cost[it] * weight, minlength=size)
    e, c = e.reshape(-1, 3), c.reshape(-1, 3)
    if dense:
      e, c = e[uniq], c[uniq]
    return (RequestAccounts(uniq, e, c),
            (float(math.fsum(energy[empty])), float(math.fsum(cost[empty]))))

  def _row_blocks(self, n: int):
    """Yields ``(a, b, iteration, request id, tokens)`` per row, for blocks
    ``[a, b)`` of the ``n`` iterations, each kind of row in turn (views of the
    ledger's arrays that must not outlive the caller's loop)."""
    groups = [(np.frombuffer(c, np.int64), np.frombuffer(i, np.int64),
               np.frombuffer(t, np.int64)) for c, i, t in self._rows]
    offsets = [np.concatenate(([0], np.cumsum(counts))) for counts, _, _ in groups]
    rows = sum(len(ids) for _, ids, _ in groups)
    step = max(1, n * self._BLOCK_ROWS // max(1, rows))
    for a in range(0, n, step):
      b = min(n, a + step)
      for kind, ((counts, ids, tokens), off) in enumerate(zip(groups, offsets)):
        lo, hi = int(off[a]), int(off[b])
        per_row = (np.repeat(tokens[a:b], counts[a:b]) if kind == _DECODE_ROWS   # steps
                   else tokens[lo:hi])
        yield (a, b, np.repeat(np.arange(a, b), counts[a:b]), ids[lo:hi],
               per_row.astype(np.float64))

  def _instances(self, codes, starts, ends, run_s: float,
                 records: Sequence[RequestRecord]) -> list[InstanceAccount]:
    n = len(self.names)
    busy = np.bincount(codes, weights=ends - starts, minlength=3 * n).reshape(n, 3)
    idle = _idle_seconds(codes // 3, starts, ends, run_s, n)
    sent, received, exposed = _transfers(self.names, records)
    out = []
    for i, (name, home, r) in enumerate(zip(self.names, self.homes, self.rates)):
      b = {k: float(busy[i, j]) for j, k in enumerate(KINDS)}
      price_s = r.usd_per_hour / SECONDS_PER_HOUR
      out.append(InstanceAccount(
          name, home, r, b, float(idle[i]), {k: b[k] * w for k, w in zip(KINDS, r.busy_w)},
          float(idle[i]) * r.idle_w, run_s * price_s, float(idle[i]) * price_s,
          int(sent[i]), int(received[i]), float(exposed[i])))
    return out


_DECODE_ROWS = 2          # the kind of row (of ``EnergyLedger._rows``) with tokens per iteration


def _idle_seconds(inst: np.ndarray, starts: np.ndarray, ends: np.ndarray, run_s: float,
                  n: int) -> np.ndarray:
  """Per instance, the summed gaps of ``[0, run_s)`` not covered by its
  iterations (a gap is counted only where it is positive, so overlapping
  iterations break busy + idle == run_s instead of hiding)."""
  order = np.lexsort((ends, starts, inst))
  inst, starts, ends = inst[order], starts[order], ends[order]
  first = np.ones(len(inst), bool)
  first[1:] = inst[1:] != inst[:-1]
  prev_end = np.empty_like(ends)
  prev_end[0:1] = 0.0
  prev_end[1:] = ends[:-1]
  prev_end[first] = 0.0
  gaps = np.bincount(inst, weights=np.maximum(starts - prev_end, 0.0), minlength=n)
  last_end = np.zeros(n)
  last = np.ones(len(inst), bool)
  last[:-1] = inst[:-1] != inst[1:]
  last_end[inst[last]] = ends[last]
  return gaps + (run_s - last_end)


def _transfers(names: Sequence[str],
               records: Sequence[RequestRecord]) -> tuple[list[int], list[int], list[float]]:
  """KV bytes sent / received per instance and the exposed seconds of its sends."""
  index = {n: i for i, n in enumerate(names)}
  sent, received, exposed = [0] * len(names), [0] * len(names), [0.0] * len(names)
  for r in records:
    if r.transfer_bytes:
      src, dst = index.get(r.prompt_instance), index.get(r.token_instance)
      if src is not None:
        sent[src] += r.transfer_bytes
        exposed[src] += r.transfer_s
      if dst is not None:
        received[dst] += r.transfer_bytes
  return sent, received, exposed


def _window_sums(starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, w: float,
                 n: int) -> np.ndarray:
  """Sum of weight x overlap seconds of each interval with windows [k w, (k+1) w),
  k < n (an interval inside one window, or its head, whole middle windows via a
  difference array, and its tail)."""
  k0, k1 = (starts // w).astype(np.int64), (ends // w).astype(np.int64)
  size = max(n, int(k1.max(initial=0)) + 1) + 1
  one = k0 == k1
  out = np.zeros(size)
  out += np.bincount(k0[one], weights=weights[one] * (ends[one] - starts[one]), minlength=size)
  a, b, s, e, x = k0[~one], k1[~one], starts[~one], ends[~one], weights[~one]
  out += np.bincount(a, weights=x * ((a + 1) * w - s), minlength=size)
  out += np.bincount(b, weights=x * (e - b * w), minlength=size)
  whole = np.bincount(a + 1, weights=x, minlength=size) - np.bincount(b, weights=x,
                                                                      minlength=size)
  out += np.cumsum(whole) * w
  return out[:n]


def _power_draw(rates: Sequence[InstanceRates], codes, starts, ends, run_s: float,
                window_s: float, budget_w: float | None, max_points: int) -> PowerDraw:
  """Cluster draw: idle power of all instances + (phase - idle) power while busy."""
  idle = np.array([r.idle_w for r in rates], np.float64)
  extra = (np.array([r.busy_w for r in rates], np.float64) - idle[:, None]).reshape(-1)[codes]
  base = float(math.fsum(idle))
  fine = math.ceil(run_s / window_s) if run_s > 0 else 0
  sums = _window_sums(starts, ends, extra, window_s, fine)
  spans = np.minimum(run_s, np.arange(1, fine + 1) * window_s) - np.arange(fine) * window_s
  merge = max(1, math.ceil(fine / max_points))
  pad = -fine % merge
  coarse = np.add.reduceat(np.append(sums, np.zeros(pad)), np.arange(0, fine + pad, merge)
                           ) if fine else np.zeros(0)
  coarse_spans = np.add.reduceat(np.append(spans, np.zeros(pad)),
                                 np.arange(0, fine + pad, merge)) if fine else np.zeros(0)
  peak_w, peak_at, over = _peak(base, extra, starts, ends, run_s, budget_w)
  busy_j = float(math.fsum(extra * (ends - starts)))
  return PowerDraw(
      window_s * merge, [base + float(s) / t for s, t in zip(coarse, coarse_spans)],
      window_s, base + float((sums / spans).max(initial=0.0)), peak_w, peak_at,
      base + busy_j / run_s if run_s > 0 else base, float(math.fsum(r.max_w for r in rates)),
      budget_w, over)


def _peak(base: float, extra: np.ndarray, starts: np.ndarray, ends: np.ndarray, run_s: float,
          budget_w: float | None) -> tuple[float, float, float]:
  """Instantaneous peak draw (W), when it starts (s), seconds above the budget.
  The level is read after all events at one time (back-to-back iterations
  never count twice)."""
  times = np.concatenate([starts, ends])
  if not len(times):
    return base, 0.0, (run_s if budget_w is not None and base > budget_w else 0.0)
  order = np.argsort(times, kind="stable")
  times = times[order]
  level = base + np.cumsum(np.concatenate([extra, -extra])[order])
  settled = np.append(times[1:] != times[:-1], True)     # last event at each time
  times, level = times[settled], level[settled]
  k = int(np.argmax(level))
  peak, at = (float(level[k]), float(times[k])) if level[k] > base else (base, 0.0)
  over = 0.0
  if budget_w is not None:
    spans = np.diff(np.append(times, run_s))                # level[i] holds until times[i+1]
    over = float(math.fsum(spans[level > budget_w]))
    over += float(times[0]) if base > budget_w else 0.0
  return peak, at, over


def summary_dict(ledger: EnergyLedger, run_s: float, records: Sequence[RequestRecord], *,
                 window_s: float = 1.0, power_budget_w: float | None = None) -> dict:
  """The ``energy`` section of summary.json: totals (kWh, $), per 1k completed
  requests and per 1M output tokens, per-request percentiles, power over time
  and its peak (vs ``power_budget_w``, watts), and per home pool the busy /
  idle seconds, energy by phase, cost and KV bytes moved."""
  return ledger.account(run_s, records, window_s=window_s,
                        power_budget_w=power_budget_w).to_dict()


def rates_from_perf(perf: PerfModel, usd_per_hour: float) -> InstanceRates:
  """An instance's rates from a perf model's ``power_w`` per phase and a price."""
  return InstanceRates(perf.power_w(Phase.PREFILL), perf.power_w(Phase.DECODE),
                       perf.power_w(Phase.MIXED), perf.power_w(Phase.IDLE), usd_per_hour)


def machine_share(perf: PerfModel) -> tuple[Hardware, float]:
  """The machine a simulator perf model is priced on, and the share of its
  devices one instance uses (tp / devices per machine)."""
  if isinstance(perf, ProfilePerfModel):
    hw = perf.machine
  elif isinstance(perf, RooflineModel):
    hw = perf.hw
  else:
    raise TypeError(f"cannot tell the machine of a {type(perf).__name__}: pass the "
                    "instances' prices (dollars per hour) explicitly")
  return hw, perf.tp / hw.devices_per_machine


def simulator_ledger(sim, prices_usd_per_hour: Mapping[str, float] | None = None
                     ) -> EnergyLedger:
  """A ledger for ``sim``'s instances (``sim.coord.instances``, ``sim.perf``):
  power from each perf model; price from ``prices_usd_per_hour`` (instance name
  -> $/h) or else the catalog price of the perf model's machine x the instance's
  share of it. Add ``ledger.observe_works`` to ``sim.work_observers`` before ``sim.run``."""
  rates = []
  for inst in sim.coord.instances:
    perf = sim.perf[inst.name]
    if prices_usd_per_hour is not None:
      price = prices_usd_per_hour[inst.name]
    else:
      hw, share = machine_share(perf)
      price = hw.cost_per_hour_usd * share
    rates.append(rates_from_perf(perf, price))
  return EnergyLedger(sim.coord.instances, rates)
