"""Prometheus metrics of the HTTP server (one registry per server, no globals).

:class:`ServerMetrics` is the online engine's observer (request ends, finished
iterations, KV transfers land; called on the engine thread) and a collector
that reads the engine's occupancy snapshot at scrape time. Names (all prefixed
``splitjax_``):

  ttft_seconds / tbt_seconds / e2e_seconds / queue_seconds   histograms, per
      request that produced tokens (TBT = the request's mean gap, as summary.json)
  requests_total{reason}            ended requests by EndReason (length, stop,
      aborted, rejected, failed)
  http_refused_total{code, reason}  refused before reaching the engine (400 / 429 / 503)
  prompt_tokens_total, generation_tokens_total
  kv_transfers_total, kv_transfer_bytes_total, kv_transfer_exposed_seconds_total
  instance_busy_seconds_total{instance, kind}     iteration seconds by WorkKind
  instance_failures_total, resubmitted_requests_total (recomputed after a fault),
      kv_transfer_retries_total, kv_transfer_fallbacks_total (retries used up:
      recomputed)
  queued_prompts / queued_prompt_tokens / waiting_decode / decoding /
      transferring {pool}          per current role (prompt, token, mixed, colocated)
  kv_used_tokens / kv_capacity_tokens {instance}
  pool_instances{pool}, mixed_pool_borrowings_total, mixed_pool_returns_total
  requests_waiting, requests_open, engine_alive
  energy_joules_total{instance}, cost_usd_total{instance}   only with rates:
      busy seconds x phase power + idle seconds x idle power; uptime x price
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from splitjax.accounts import InstanceRates
from splitjax.metrics import RequestRecord
from splitjax.runtime.faults import FaultEvent
from splitjax.runtime.online_types import EndReason, EngineObserver, EngineSnapshot
from splitjax.scheduling.records import Role, WorkKind

P = "splitjax_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)


class ServerMetrics(EngineObserver):
  """Observer + collector; ``snapshot`` returns the engine's latest occupancy.
  ``rates`` (instance name -> InstanceRates) turns on the energy and cost counters."""

  def __init__(self, snapshot: Callable[[], EngineSnapshot],
               rates: Mapping[str, InstanceRates] | None = None):
    self.registry = r = CollectorRegistry()
    self._snapshot, self.rates = snapshot, dict(rates or {})
    self._t0 = time.monotonic()
    self._busy: dict[tuple[str, WorkKind], float] = {}
    self._lock = threading.Lock()
    hist = lambda name, doc: Histogram(P + name, doc, registry=r, buckets=LATENCY_BUCKETS)
    self.ttft = hist("ttft_seconds", "Time to first token (from arrival).")
    self.tbt = hist("tbt_seconds", "Mean time between tokens of a request.")
    self.e2e = hist("e2e_seconds", "Arrival to last token.")
    self.queue = hist("queue_seconds", "Arrival to prefill start.")
    self.ended = Counter(P + "requests", "Ended requests by reason.", ["reason"], registry=r)
    self.refused = Counter(P + "http_refused", "Requests refused before the engine.",
                           ["code", "reason"], registry=r)
    self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens of ended requests.",
                                 registry=r)
    self.gen_tokens = Counter(P + "generation_tokens", "Tokens generated.", registry=r)
    self.transfers = Counter(P + "kv_transfers", "KV transfers landed.", registry=r)
    self.transfer_bytes = Counter(P + "kv_transfer_bytes", "KV bytes moved.", registry=r)
    self.transfer_s = Counter(P + "kv_transfer_exposed_seconds",
                              "KV transfer time after the first token.", registry=r)
    self.busy = Counter(P + "instance_busy_seconds", "Iteration seconds.", ["instance", "kind"],
                        registry=r)
    self.faults = {e: Counter(P + name, doc, registry=r) for e, name, doc in (
        (FaultEvent.INSTANCE_FAILED, "instance_failures", "Instances taken down by a fault."),
        (FaultEvent.RESUBMITTED, "resubmitted_requests",
         "Requests re-routed and recomputed after a fault."),
        (FaultEvent.TRANSFER_RETRIED, "kv_transfer_retries", "Failed KV transfers sent again."),
        (FaultEvent.TRANSFER_FALLBACK, "kv_transfer_fallbacks",
         "KV transfers given up after the retries: request recomputed."))}
    for reason in EndReason:              # every series exists from the start
      self.ended.labels(reason.value)
    r.register(_Occupancy(self))

  # ---------------------------------------------------------------- engine thread
  def on_end(self, rec: RequestRecord, reason: EndReason) -> None:
    self.ended.labels(reason.value).inc()
    self.prompt_tokens.inc(rec.prompt_tokens)
    self.gen_tokens.inc(rec.tokens)
    if rec.ttft_s is not None:
      self.ttft.observe(rec.ttft_s)
      self.e2e.observe(rec.e2e_s)
    if rec.tbt_s is not None:
      self.tbt.observe(rec.tbt_s)
    if rec.queue_s is not None:
      self.queue.observe(rec.queue_s)

  def on_work(self, instance: str, kind: WorkKind, seconds: float) -> None:
    self.busy.labels(instance, kind.value).inc(seconds)
    with self._lock:
      key = (instance, kind)
      self._busy[key] = self._busy.get(key, 0.0) + seconds

  def on_transfer(self, nbytes: int, seconds: float) -> None:
    self.transfers.inc()
    self.transfer_bytes.inc(nbytes)
    self.transfer_s.inc(seconds)

  def on_fault(self, event: FaultEvent) -> None:
    self.faults[event].inc()

  # ---------------------------------------------------------------- HTTP side
  def refuse(self, code: int, reason: str) -> None:
    """A request refused with HTTP ``code`` before reaching the engine."""
    self.refused.labels(str(code), reason).inc()

  def energy(self) -> dict[str, tuple[float, float]]:
    """instance -> (joules, dollars) since the server started (needs rates)."""
    up = time.monotonic() - self._t0
    with self._lock:
      busy = dict(self._busy)
    out = {}
    for name, rate in self.rates.items():
      by_kind = {k: busy.get((name, k), 0.0) for k in WorkKind}
      watts = {WorkKind.PREFILL: rate.prefill_w, WorkKind.DECODE: rate.decode_w,
               WorkKind.MIXED: rate.mixed_w}
      joules = sum(s * watts[k] for k, s in by_kind.items())
      joules += max(0.0, up - sum(by_kind.values())) * rate.idle_w
      out[name] = (joules, up / 3600.0 * rate.usd_per_hour)
    return out


class _Occupancy:
  """Gauges read from the engine snapshot when scraped."""

  def __init__(self, m: ServerMetrics):
    self.m = m

  def collect(self):
    snap = self.m._snapshot()
    pools = [role.value for role in Role]
    fields = ("queued_prompts", "queued_prompt_tokens", "waiting_decode", "decoding",
              "transferring")
    for f in fields:
      g = GaugeMetricFamily(P + f, f"{f} summed over the instances of each pool",
                            labels=["pool"])
      for pool in pools:
        g.add_metric([pool], sum(getattr(i, f) for i in snap.instances if i.role.value == pool))
      yield g
    g = GaugeMetricFamily(P + "pool_instances", "Instances per current role", labels=["pool"])
    for pool in pools:
      g.add_metric([pool], sum(i.role.value == pool for i in snap.instances))
    yield g
    for f, doc in (("kv_used_tokens", "KV tokens allocated"),
                   ("kv_capacity_tokens", "KV tokens the instance can hold")):
      g = GaugeMetricFamily(P + f, doc, labels=["instance"])
      for i in snap.instances:
        g.add_metric([i.name], getattr(i, f))
      yield g
    yield CounterMetricFamily(P + "mixed_pool_borrowings", "Instances borrowed into the mixed "
                              "pool", value=snap.borrowings)
    yield CounterMetricFamily(P + "mixed_pool_returns", "Borrowed instances returned home",
                              value=snap.returns)
    yield GaugeMetricFamily(P + "requests_waiting", "Accepted, no first token yet",
                            value=snap.waiting)
    yield GaugeMetricFamily(P + "requests_open", "Accepted, not ended", value=snap.open)
    yield GaugeMetricFamily(P + "engine_alive", "1 while the engine thread runs",
                            value=int(snap.alive))
    if self.m.rates:
      e = CounterMetricFamily(P + "energy_joules", "Energy at the configured rates",
                              labels=["instance"])
      c = CounterMetricFamily(P + "cost_usd", "Cost at the configured prices",
                              labels=["instance"])
      for name, (joules, usd) in self.m.energy().items():
        e.add_metric([name], joules)
        c.add_metric([name], usd)
      yield e
      yield c


def host_rates(names: list[str], machine_power_w: float, usd_per_hour: float,
               fractions=(1.0, 0.45, 1.0, 0.15)) -> dict[str, InstanceRates]:
  """Rates of instances sharing one machine equally: phase power = fraction x
  machine power / instances (prefill, decode, mixed, idle fractions as
  ``sim.hardware.PhasePower``'s defaults), price = machine price / instances."""
  n = len(names)
  pre, dec, mix, idle = (f * machine_power_w / n for f in fractions)
  return {name: InstanceRates(pre, dec, mix, idle, usd_per_hour / n) for name in names}
