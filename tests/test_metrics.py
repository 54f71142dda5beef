"""Latency definitions, percentiles, conservation of requests in summaries."""

import csv
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from splitjax.metrics import (Percentiles, RequestRecord, RequestStatus, summarize,
                              write_requests_csv)


def _done(rid, arrival, times, scheduled=None):
  r = RequestRecord(rid, arrival, 10, len(times), scheduled_s=scheduled, token_times_s=times)
  r.finish(RequestStatus.COMPLETED)
  return r


def test_definitions():
  r = _done(0, 1.0, [1.5, 1.6, 2.0, 2.1], scheduled=1.2)
  assert r.queue_s == pytest.approx(0.2)
  assert r.ttft_s == pytest.approx(0.5) and r.e2e_s == pytest.approx(1.1)
  assert r.tbt_s == pytest.approx(0.6 / 3)              # mean gap
  assert r.itl_s == pytest.approx([0.1, 0.4, 0.1])      # every gap; shows the 0.4 stall
  assert _done(1, 0.0, [0.3]).tbt_s is None


def test_failed_needs_reason_and_pending_is_an_error():
  r = RequestRecord(0, 0.0, 5, 5)
  with pytest.raises(ValueError, match="reason"):
    r.finish(RequestStatus.FAILED)
  with pytest.raises(ValueError, match="never finished"):
    summarize([r], 1.0)


def test_summary_conserves_requests(tmp_path):
  ok = [_done(i, float(i), [i + 0.5, i + 0.7]) for i in range(3)]
  bad = RequestRecord(3, 0.0, 10**6, 5)
  bad.finish(RequestStatus.REJECTED, "prompt longer than the context limit")
  s = summarize(ok + [bad], wall_s=4.0)
  d = s.to_dict()
  assert d["requests"] == {"submitted": 4, "completed": 3, "failed": 1, "rejected": 1}
  assert d["requests"]["completed"] + d["requests"]["failed"] == d["requests"]["submitted"]
  assert d["ttft_s"]["p50"] == pytest.approx(0.5)
  assert d["throughput"]["output_tokens_per_s"] == pytest.approx(6 / 4.0)
  path = tmp_path / "r.csv"
  write_requests_csv(ok + [bad], path)
  rows = list(csv.DictReader(path.open()))
  assert len(rows) == 4 and rows[3]["status"] == "rejected" and rows[3]["ttft_s"] == ""


@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_match_numpy(values):
  p = Percentiles.of(values)
  assert p.count == len(values)
  assert p.p50 == pytest.approx(np.percentile(values, 50))
  assert p.p99 == pytest.approx(np.percentile(values, 99))
  assert p.p50 <= p.p90 <= p.p99


def test_empty_percentiles_are_nan():
  p = Percentiles.of([])
  assert p.count == 0 and math.isnan(p.p50)
