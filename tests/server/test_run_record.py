"""A served run's summary.json (from the request records) agrees with its /metrics
counters: two independent accounts of the same requests."""

import json

from splitjax.runtime.online_types import OnlineLimits
from tests.server.conftest import start
from tests.server.helpers import metrics, post, wait_for


def test_metrics_counters_agree_with_the_runs_summary(cluster, tmp_path):
  lv, http_ = start(cluster, OnlineLimits(max_waiting=8, max_open=16))
  try:
    for n, body in enumerate([{"prompt": [3] * 12, "max_tokens": 6},
                              {"prompt": "hello there", "max_tokens": 4, "stream": True},
                              {"prompt": [9] * 40, "max_tokens": 9, "temperature": 0.7},
                              {"prompt": [1] * 30, "max_tokens": 1}]):
      code, _, _ = post(lv.url, body)
      assert code == 200, (n, body)
    assert post(lv.url, {"prompt": [], "max_tokens": 3})[0] == 400   # never reaches the engine
    m = wait_for(lambda: (x := metrics(lv.url)) and
                 x[("splitjax_requests_waiting", ())] == 0 and x, what="idle engine")
  finally:
    http_.stop()
  summary = lv.server.recorder.write(tmp_path, lv.server.engine.clock.now()).to_dict()
  assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
  rows = (tmp_path / "requests.csv").read_text().splitlines()
  assert len(rows) == 1 + summary["requests"]["submitted"] == 5
  ended = {labels[0][1]: v for (name, labels), v in m.items() if name == "splitjax_requests_total"}
  assert summary["requests"]["submitted"] == sum(ended.values()) == 4
  assert summary["requests"]["completed"] == ended["length"] + ended["stop"] == 4
  assert summary["requests"]["failed"] == ended["failed"] + ended["aborted"] + ended["rejected"]
  tokens = sum(int(r.split(",")[6]) for r in rows[1:])
  assert m[("splitjax_generation_tokens_total", ())] == tokens == 6 + 4 + 9 + 1
  assert m[("splitjax_ttft_seconds_count", ())] == summary["requests"]["completed"]
  assert m[("splitjax_kv_transfer_bytes_total", ())] == summary["transfer"]["bytes"] > 0
  assert abs(m[("splitjax_kv_transfer_exposed_seconds_total", ())]
             - summary["transfer"]["seconds"]) < 1e-9
