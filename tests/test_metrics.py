"""Latency definitions, percentiles, conservation of requests in summaries."""

import csv
import io
import math
import tempfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from splitjax import metrics
from splitjax.metrics import (CSV_FIELDS, GapSample, Percentiles, RequestRecord, RequestStatus,
                              summarize, write_requests_csv)


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
  assert [p.p50, p.p90, p.p99] == list(np.percentile(values, [50, 90, 99]))   # exactly
  assert p.p50 <= p.p90 <= p.p99


def test_empty_percentiles_are_nan():
  p = Percentiles.of([])
  assert p.count == 0 and math.isnan(p.p50)


@given(st.lists(st.tuples(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=20),
                          st.integers(0, 5)), min_size=1, max_size=20),
       st.lists(st.floats(0, 10, allow_nan=False), max_size=20))
def test_gap_sample_equals_numpy_over_the_expanded_multiset(runs, ones):
  expanded = list(ones) + [v for values, weight in runs for v in values * weight]
  for bins in (4096, 3):                       # one bin / several bins (values binned)
    sample = GapSample()
    sample._BINS = bins
    for values, weight in runs:
      sample.add(np.array(values), weight)
    for v in ones:
      sample.add_value(v)
    p = sample.percentiles()
    assert p.count == len(expanded)
    if expanded:                               # float for float, as np.percentile
      assert [p.p50, p.p90, p.p99] == list(np.percentile(expanded, [50, 90, 99]))
      assert p.mean == pytest.approx(np.mean(expanded))
    else:
      assert math.isnan(p.p50)


@given(st.lists(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=6),
                min_size=1, max_size=6))
def test_token_statistics_without_times_equal_those_with_times(groups):
  kept = RequestRecord(0, 0.0, 10, 50)
  stats = RequestRecord(0, 0.0, 10, 50, token_times_s=None)
  t = 0.0
  for deltas in groups:                       # one emission of several tokens
    times = list(np.cumsum([t] + deltas)[1:])
    t = times[-1]
    inner = max((b - a for a, b in zip(times, times[1:])), default=0.0)
    kept.add_tokens(times[0], times[-1], len(times), inner, times)
    stats.add_tokens(times[0], times[-1], len(times), inner)
  assert stats.token_times_s is None
  assert (stats.tokens, stats.ttft_s, stats.e2e_s, stats.tbt_s) == (
      len(kept.token_times_s), kept.ttft_s, kept.e2e_s, kept.tbt_s)
  assert stats.max_itl_s == (max(kept.itl_s) if len(kept.token_times_s) > 1 else None)
  with pytest.raises(ValueError, match="kept no token times"):
    stats.itl_s


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=6),
                          st.one_of(st.none(), st.floats(0, 1e4, allow_nan=False)),
                          st.floats(0, 1e4, allow_nan=False)), max_size=8))
def test_requests_csv_is_what_csv_writer_writes(rows):
  """The fast writer's bytes equal csv.writer's, quoting included."""
  records = []
  for n, (reason, name, sched, arrival) in enumerate(rows):
    r = RequestRecord(n, arrival, 3, 2, scheduled_s=sched, prompt_instance=name,
                      token_instance=name[::-1], token_times_s=None)
    r.add_tokens(arrival + 1.0, arrival + 2.5, 2, 1.5)
    r.finish(RequestStatus.FAILED if reason else RequestStatus.COMPLETED, reason)
    records.append(r)
  want = io.StringIO(newline="")
  w = csv.writer(want)
  w.writerow(CSV_FIELDS)
  for r in records:
    w.writerow([r.request_id, r.status.value, r.reason, r.arrival_s, r.prompt_tokens,
                r.output_tokens, r.tokens, r.queue_s, r.ttft_s, r.tbt_s, r.e2e_s, r.max_itl_s,
                r.prompt_instance, r.token_instance, r.transfer_bytes, r.transfer_s,
                r.preemptions])
  with tempfile.TemporaryDirectory() as d:
    write_requests_csv(records, f"{d}/r.csv")
    with open(f"{d}/r.csv", newline="") as f:
      assert f.read() == want.getvalue()


@given(st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
                          st.floats(0, 1, allow_nan=False), st.floats(0, 1, allow_nan=False),
                          st.integers(1, 5), st.floats(0, 0.5, allow_nan=False)),
                min_size=1, max_size=8))
def test_decode_rows_at_once_equal_one_record_at_a_time(steps):
  one = [RequestRecord(i, 0.0, 10, 50, token_times_s=None) for i in range(4)]
  many = [RequestRecord(i, 0.0, 10, 50, token_times_s=None) for i in range(4)]
  t = 0.0
  for rows, gap_in, span, n, inner in steps:
    first = t + gap_in
    last = first + (span if n > 1 else 0.0)
    t = last
    expected: dict = {}
    for i in rows:
      expected[one[i].last_token_s] = expected.get(one[i].last_token_s, 0) + 1
      one[i].add_tokens(first, last, n, inner)
    assert metrics.add_decode_tokens([many[i] for i in rows], first, last, n, inner) == expected
    assert many == one
