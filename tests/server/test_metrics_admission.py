"""/metrics parses with the Prometheus text parser and agrees with the requests
served; a full queue answers 429 at once (with a reason), a stopped engine 503."""



from splitjax.runtime.online_types import OnlineLimits
from splitjax.server.metrics import host_rates
from tests.server.conftest import start
from tests.server.helpers import engine_drained, engine_leaks, metrics, open_stream, post, wait_for

REQ = ("splitjax_requests_total", (("reason", "length"),))


def _delta(after, before, key):
  return after.get(key, 0) - before.get(key, 0)


def test_metrics_agree_with_the_served_requests(live):
  wait_for(lambda: engine_drained(live.server.engine), what="idle engine")
  before = metrics(live.url)
  usage = []
  for i, (prompt, n) in enumerate([([1, 2, 3], 5), ("some text", 7), (list(range(40)), 3)]):
    code, _, body = post(live.url, {"prompt": prompt, "max_tokens": n, "temperature": 0})
    assert code == 200
    usage.append(body["usage"])
  assert post(live.url, {"prompt": ""})[0] == 400
  wait_for(lambda: metrics(live.url)[REQ] - before.get(REQ, 0) == 3, what="3 ended")
  after = metrics(live.url)
  gen = sum(u["completion_tokens"] for u in usage)
  prompt = sum(u["prompt_tokens"] for u in usage)
  assert _delta(after, before, ("splitjax_generation_tokens_total", ())) == gen == 15
  assert _delta(after, before, ("splitjax_prompt_tokens_total", ())) == prompt
  for h in ("ttft", "e2e", "queue"):
    assert _delta(after, before, (f"splitjax_{h}_seconds_count", ())) == 3
  assert _delta(after, before, ("splitjax_tbt_seconds_count", ())) == 3
  assert _delta(after, before, ("splitjax_kv_transfers_total", ())) == 3     # split cluster
  assert _delta(after, before, ("splitjax_kv_transfer_bytes_total", ())) > 0
  assert _delta(after, before, ("splitjax_http_refused_total",
                                (("code", "400"), ("reason", "invalid_request_error")))) == 1
  busy = sum(v - before.get(k, 0) for k, v in after.items()
             if k[0] == "splitjax_instance_busy_seconds_total")
  assert busy > 0
  pools = {dict(k[1])["pool"]: v for k, v in after.items() if k[0] == "splitjax_pool_instances"}
  assert pools == {"prompt": 2, "token": 2, "mixed": 0, "colocated": 0, "down": 0}
  caps = [v for k, v in after.items() if k[0] == "splitjax_kv_capacity_tokens"]
  assert caps == [4 * 128] * 4
  assert after[("splitjax_engine_alive", ())] == 1
  assert after[("splitjax_requests_open", ())] == 0
  wait_for(lambda: not engine_leaks(live.server.engine), what="nothing held")


def test_a_full_queue_answers_429_then_serves_again(cluster):
  rates = host_rates(["prompt0", "prompt1", "token0", "token1"], 400.0, 2.0)
  lv, http_ = start(cluster, OnlineLimits(max_waiting=1, max_open=1), rates=rates)
  try:
    conn, first = open_stream(lv.url, {"prompt": [7] * 10, "max_tokens": 60, "temperature": 0})
    code, headers, body = post(lv.url, {"prompt": "x", "max_tokens": 2})
    assert code == 429 and headers.get("retry-after") == "1"
    assert "server full" in body["error"]["message"], body
    rest = first.read().decode()
    assert rest.rstrip().endswith("data: [DONE]")
    conn.close()
    assert post(lv.url, {"prompt": "x", "max_tokens": 2})[0] == 200
    m = metrics(lv.url)
    assert m[("splitjax_http_refused_total", (("code", "429"), ("reason", "overloaded_error")))] == 1
    energy = [v for k, v in m.items() if k[0] == "splitjax_energy_joules_total"]
    assert len(energy) == 4 and all(v > 0 for v in energy)
    lv.server.engine.stop()
    code, _, body = post(lv.url, {"prompt": "x", "max_tokens": 2})
    assert code == 503 and "stopped" in body["error"]["message"]
    assert post(lv.url, b"", path="/health", method="GET")[0] == 503
  finally:
    http_.stop()
