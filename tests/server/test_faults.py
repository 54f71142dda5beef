"""Faults with real engines (tiny model, 2 prompt + 2 token instances, greedy):
a token instance killed mid-stream, a prompt instance killed mid-prefill, KV
transfers failing (retried, and past the retries recomputed) -> every stream
completes with the tokens of the fault-free run; the same through HTTP with the
admin endpoint and the openai client streaming."""

import queue
import threading

import pytest

openai = pytest.importorskip("openai")

from splitjax.runtime.faults import FaultEvent  # noqa: E402
from splitjax.runtime.online_types import (EndEvent, EndReason, Generation,  # noqa: E402
                                           OnlineLimits)
from tests.server.conftest import MODEL_NAME, start  # noqa: E402
from tests.server.helpers import engine_leaks, metrics, post, wait_for  # noqa: E402

PROMPTS = [list(range(3 + i, 13 + 3 * i)) for i in range(6)]     # 10 .. 25 tokens
NEW = 20


@pytest.fixture(scope="module")
def reference(cluster):
  return cluster.generate(PROMPTS, NEW)


class Stream:
  """One request's events, collected on the engine thread."""

  def __init__(self):
    self.q, self.tokens, self.end = queue.Queue(), {}, None

  def __call__(self, ev):
    self.q.put(ev)

  def wait(self, n_tokens: int = 0, timeout: float = 60.0) -> None:
    """Until ``n_tokens`` arrived (0: until the end)."""
    while self.end is None and (n_tokens == 0 or len(self.tokens) < n_tokens):
      ev = self.q.get(timeout=timeout)
      if isinstance(ev, EndEvent):
        self.end = ev
      else:
        assert ev.index not in self.tokens, f"token {ev.index} sent twice"
        self.tokens[ev.index] = ev.token_id

  def ids(self) -> list[int]:
    return [self.tokens[i] for i in range(len(self.tokens))]


def _serve(cluster, **limits):
  engine = cluster.online(OnlineLimits(max_waiting=16, max_open=16, **limits)).start()
  streams = [Stream() for _ in PROMPTS]
  for p, s in zip(PROMPTS, streams):
    engine.submit(Generation(tuple(p), NEW), s)
  return engine, streams


def _finish(engine, streams, reference):
  for s in streams:
    s.wait()
  assert [s.end.reason for s in streams] == [EndReason.LENGTH] * len(streams)
  assert [s.ids() for s in streams] == reference
  wait_for(lambda: not engine_leaks(engine) and engine.snapshot.open == 0, what="nothing held")


def test_killing_a_token_instance_mid_stream_keeps_every_stream_exact(cluster, reference):
  engine, streams = _serve(cluster)
  try:
    for s in streams:
      s.wait(3)                                  # every request is decoding somewhere
    out = engine.fail_instance("token0").result(timeout=30)
    assert out.resubmitted and not out.failed
    _finish(engine, streams, reference)
    assert engine._run.faults[FaultEvent.RESUBMITTED] == len(out.resubmitted)
  finally:
    engine.stop()


def test_killing_a_prompt_instance_mid_prefill_keeps_every_stream_exact(cluster, reference):
  engine = cluster.online(OnlineLimits(max_waiting=16, max_open=16))
  ex, result = engine._run.ex, []
  launch = ex.launch

  def launch_then_fail(work, now):         # engine thread: the prefill is dispatched, and
    launch(work, now)                      # the next pass drains the fault before polling
    if work.instance.name == "prompt0" and work.prefill and not result:
      result.append(engine.fail_instance("prompt0"))
  ex.launch = launch_then_fail
  engine.start()
  try:
    streams = [Stream() for _ in PROMPTS]
    for p, s in zip(PROMPTS, streams):
      engine.submit(Generation(tuple(p), NEW), s)
    wait_for(lambda: result, what="a prefill on prompt0")
    out = result[0].result(timeout=30)
    assert out.resubmitted and not out.failed
    _finish(engine, streams, reference)
  finally:
    engine.stop()


def test_failed_transfers_are_retried_or_recomputed_exactly(cluster, reference):
  engine = cluster.online(OnlineLimits(max_waiting=16, max_open=16, transfer_retries=2)).start()
  try:
    engine.fail_transfers(request_ids=[1] + [4] * 3)   # 1: retried; 4: past the retries
    streams = [Stream() for _ in PROMPTS]
    for p, s in zip(PROMPTS, streams):
      engine.submit(Generation(tuple(p), NEW), s)
    _finish(engine, streams, reference)
    faults = engine._run.faults
    assert faults[FaultEvent.TRANSFER_RETRIED] == 3
    assert faults[FaultEvent.TRANSFER_FALLBACK] == faults[FaultEvent.RESUBMITTED] == 1
  finally:
    engine.stop()


def test_admin_endpoint_fails_an_instance_under_openai_streams(cluster, reference):
  lv, http = start(cluster, OnlineLimits(max_waiting=16, max_open=16))
  try:
    client = openai.OpenAI(base_url=lv.url + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    got, started = [None] * 3, [threading.Event() for _ in range(3)]

    def stream(i):
      ids = []
      for chunk in client.completions.create(model=MODEL_NAME, prompt=PROMPTS[i],
                                             max_tokens=NEW, temperature=0, stream=True):
        ids += chunk.choices[0].token_ids
        if len(ids) >= 2:
          started[i].set()
      got[i] = (ids, chunk.choices[0].finish_reason)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads:
      t.start()
    for e in started:
      assert e.wait(60)
    code, _, first = post(lv.url, {"instance": "token0"}, path="/admin/fail_instance")
    assert code == 200 and first["instance"] == "token0" and first["failed"] == [], first
    for t in threads:
      t.join(120)
    assert got == [(reference[i], "length") for i in range(3)]
    code, _, body = post(lv.url, {"instance": "token0"}, path="/admin/fail_instance")
    assert code == 409 and "already down" in body["error"]["message"]
    code, _, body = post(lv.url, {"instance": "gpu9"}, path="/admin/fail_instance")
    assert code == 400 and "unknown instance" in body["error"]["message"]
    assert post(lv.url, {"name": "token1"}, path="/admin/fail_instance")[0] == 400
    m = wait_for(lambda: (m := metrics(lv.url))[("splitjax_pool_instances",
                                                 (("pool", "down"),))] == 1 and m,
                 what="the down pool in /metrics")                # gauges are sampled
    assert m[("splitjax_instance_failures_total", ())] == 1
    assert m[("splitjax_resubmitted_requests_total", ())] == len(first["resubmitted"]) > 0
    assert m[("splitjax_kv_transfer_retries_total", ())] == 0
  finally:
    http.stop()
