"""Workloads: Azure trace parsing, windows, rescaling, caps, synthetic arrivals."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from splitjax import workload
from splitjax.config import ConfigError
from splitjax.serve_config import WorkloadConfig, WorkloadSource
from splitjax.workload import ArrivalProcess, RequestSpec, TraceError

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _write(tmp_path, body, name="t.csv"):
  p = tmp_path / name
  p.write_text(HEADER + body)
  return p


def test_reads_and_sorts(tmp_path):
  p = _write(tmp_path, "2023-11-16 18:15:50.0000000,10,5\n"
                       "2023-11-16 18:15:46.5000000,7,3\n"
                       "2023-11-16 18:15:47.0000000,8,1\n")
  specs = workload.read_azure_trace(p)
  assert [(s.request_id, s.arrival_s, s.prompt_tokens, s.output_tokens) for s in specs] == [
      (0, 0.0, 7, 3), (1, 0.5, 8, 1), (2, 3.5, 10, 5)]


@pytest.mark.parametrize("body,line,what", [
    ("2023-11-16 18:15:50.0,10,5\nnot-a-time,3,4\n", 3, "malformed"),
    ("2023-11-16 18:15:50.0,10\n", 2, "expected 3 fields"),
    ("2023-11-16 18:15:50.0,10,5\n2023-11-16 18:15:51.0,x,5\n", 3, "malformed"),
    ("2023-11-16 18:15:50.0,0,5\n", 2, "positive"),
])
def test_malformed_line_is_named(tmp_path, body, line, what):
  p = _write(tmp_path, body)
  with pytest.raises(TraceError, match=f"{p}:{line}: .*{what}"):
    workload.read_azure_trace(p)


def test_bad_header_and_missing_file(tmp_path):
  p = tmp_path / "h.csv"
  p.write_text("time,prompt,output\n")
  with pytest.raises(TraceError, match="expected header"):
    workload.read_azure_trace(p)
  with pytest.raises(TraceError, match="does not exist"):
    workload.read_azure_trace(tmp_path / "none.csv")


def test_select_window_rate_and_caps():
  specs = [RequestSpec(i, float(i), 100 * (i + 1), 50) for i in range(10)]
  out = workload.select(specs, start_s=2.0, duration_s=4.0, rate_scale=2.0, max_context=300)
  assert [s.request_id for s in out] == [0, 1, 2, 3]
  assert [s.arrival_s for s in out] == [0.0, 0.5, 1.0, 1.5]
  # prompts 300, 400, 500, 600 -> cut to 299, output to what remains (1)
  assert all(s.prompt_tokens + s.output_tokens <= 300 for s in out)
  assert out[0] == RequestSpec(0, 0.0, 299, 1)
  assert len(workload.select(specs, max_requests=3)) == 3


def test_shared_azure_traces_load():
  for name, n, median_prompt in (("code", 8819, 1469), ("conv", 19366, 1020)):
    path = workload.shared_trace_path(name)
    if not path.exists():
      pytest.skip("../shared/data is not present")
    specs = workload.read_azure_trace(path)
    assert len(specs) == n
    assert np.median([s.prompt_tokens for s in specs]) == median_prompt
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(specs, specs[1:]))
    assert 3000 < specs[-1].arrival_s < 4000   # about an hour


@settings(max_examples=20, deadline=None)
@given(rate=st.floats(0.5, 50), process=st.sampled_from(list(ArrivalProcess)),
       cv=st.floats(0.5, 4), seed=st.integers(0, 1000))
def test_synthetic_rate_and_lengths(rate, process, cv, seed):
  pool = [RequestSpec(0, 0.0, 11, 3), RequestSpec(1, 0.0, 22, 4)]
  specs = workload.synthetic(rate, 4000, pool, process=process, cv=cv, seed=seed)
  gaps = np.diff([s.arrival_s for s in specs])
  assert np.all(gaps >= 0)
  assert abs(gaps.mean() * rate - 1) < 0.25
  if process == ArrivalProcess.GAMMA:
    assert abs(gaps.std() / gaps.mean() - cv) < 0.35 * cv
  assert {(s.prompt_tokens, s.output_tokens) for s in specs} == {(11, 3), (22, 4)}


def test_prompt_ids_deterministic_and_in_vocab():
  s = RequestSpec(7, 0.0, 50, 2)
  a = workload.prompt_token_ids(s, 1000)
  assert a == workload.prompt_token_ids(s, 1000) and len(a) == 50
  assert all(0 <= t < 1000 for t in a)
  assert a != workload.prompt_token_ids(RequestSpec(8, 0.0, 50, 2), 1000)


def _trace_file(tmp_path, n=200):
  rows = [f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.0000000,{100 + i},{1 + i % 7}"
          for i in range(n)]
  path = tmp_path / "t.csv"
  path.write_text(HEADER + "\n".join(rows) + "\n")
  return path


def test_rate_resamples_the_window_at_a_fixed_rate(tmp_path):
  path = str(_trace_file(tmp_path))
  window = WorkloadConfig(trace=path, duration_s=100.0)
  base = workload.build(window, 10_000)
  fast = workload.build(dataclasses.replace(window, rate=50.0, seed=3), 10_000)
  assert len(fast) == len(base) == 100                    # same number of requests
  assert fast == workload.build(dataclasses.replace(window, rate=50.0, seed=3), 10_000)
  assert 30 < len(fast) / fast[-1].arrival_s < 80         # ~50 req/s instead of 1
  sizes = {(s.prompt_tokens, s.output_tokens) for s in base}
  assert {(s.prompt_tokens, s.output_tokens) for s in fast} <= sizes
  timed = workload.build(dataclasses.replace(window, rate=50.0, rate_duration_s=20.0), 10_000)
  assert 800 < len(timed) < 1200 and timed[-1].arrival_s < 20.0
  capped = workload.build(dataclasses.replace(window, rate=50.0, max_requests=10), 10_000)
  assert len(capped) == 10


@pytest.mark.parametrize("bad, match", [
    (dict(rate=-1.0), "must be >= 0"),
    (dict(rate_duration_s=10.0), "needs workload.rate"),
    (dict(rate=5.0, rate_scale=2.0), "cannot be combined"),
    (dict(rate=5.0, source=WorkloadSource.POISSON), "cannot be combined"),
])
def test_bad_rate_options_are_clear_errors(bad, match):
  with pytest.raises(ConfigError, match=match):
    WorkloadConfig(**bad)
