"""The served run's request records: summary.json and requests.csv for HTTP mode.

A replay ends with ``summary.json`` and ``requests.csv`` computed from its
request records; :class:`RunRecorder` gives a served run the same files. It is
an engine observer that keeps a copy of every ended request's record (token
times and ids dropped: about 0.3 KB per request, plus 8 bytes per gap between
tokens for the ITL percentiles), independent of the Prometheus counters, so
the two can be checked against each other.
:class:`FanOut` lets several observers watch one engine.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np

from splitjax.metrics import (GapSample, RequestRecord, RequestStatus, Summary, summarize,
                              write_requests_csv)
from splitjax.runtime.faults import FaultEvent
from splitjax.runtime.online_types import EndReason, EngineObserver
from splitjax.scheduling.records import WorkKind


class FanOut(EngineObserver):
  """Calls every observer, in order, for each hook."""

  def __init__(self, *observers: EngineObserver):
    self.observers = observers

  def on_end(self, record: RequestRecord, reason: EndReason) -> None:
    for o in self.observers:
      o.on_end(record, reason)

  def on_work(self, instance: str, kind: WorkKind, seconds: float) -> None:
    for o in self.observers:
      o.on_work(instance, kind, seconds)

  def on_transfer(self, nbytes: int, seconds: float) -> None:
    for o in self.observers:
      o.on_transfer(nbytes, seconds)

  def on_fault(self, event: FaultEvent) -> None:
    for o in self.observers:
      o.on_fault(event)


class RunRecorder(EngineObserver):
  """Every ended request's record, in the order they ended (thread-safe reads)."""

  def __init__(self):
    self._records: list[RequestRecord] = []
    self._gaps = GapSample()          # inter-token gaps of completed requests
    self._lock = threading.Lock()

  def on_end(self, record: RequestRecord, reason: EndReason) -> None:
    slim = dataclasses.replace(record, token_times_s=None, token_ids=[])
    times = record.token_times_s
    with self._lock:
      self._records.append(slim)
      if record.status == RequestStatus.COMPLETED and times and len(times) > 1:
        self._gaps.add(np.diff(np.asarray(times, dtype=np.float64)), 1)

  @property
  def records(self) -> list[RequestRecord]:
    """A copy, in request-id order."""
    with self._lock:
      return sorted(self._records, key=lambda r: r.request_id)

  def summary(self, wall_s: float) -> Summary:
    """:func:`splitjax.metrics.summarize` over the ended requests; ``wall_s``:
    seconds the engine served (the throughput's denominator)."""
    records = self.records
    with self._lock:
      itl = self._gaps.percentiles()
    return summarize(records, wall_s, itl=itl)

  def write(self, out: Path, wall_s: float) -> Summary:
    """Writes ``out``/summary.json and ``out``/requests.csv; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = self.summary(wall_s)
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    write_requests_csv(self.records, out / "requests.csv")
    return summary
