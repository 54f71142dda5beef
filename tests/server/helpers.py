"""Raw HTTP for the server tests (stdlib http.client: exact bytes, no retries)."""

import http.client
import json
import time
from urllib.parse import urlparse

from prometheus_client.parser import text_string_to_metric_families


def post(url: str, body: bytes | dict, path: str = "/v1/completions", timeout: float = 60.0,
         method: str = "POST") -> tuple[int, dict, dict]:
  """(status, headers, JSON body or {"raw": text})."""
  u = urlparse(url)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
  try:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=data if method == "POST" else None,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read().decode("utf-8", errors="replace")
    try:
      parsed = json.loads(raw)
    except ValueError:
      parsed = {"raw": raw}
    return r.status, dict(r.getheaders()), parsed
  finally:
    conn.close()


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection,
                                               http.client.HTTPResponse]:
  """POSTs a streaming completion; returns the open connection and its response
  once the first SSE line has been read (the request is running)."""
  u = urlparse(url)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
  conn.request("POST", "/v1/completions", body=json.dumps(body | {"stream": True}),
               headers={"Content-Type": "application/json"})
  r = conn.getresponse()
  assert r.status == 200 and r.readline().startswith(b"data: ")
  return conn, r


def metrics(url: str) -> dict[tuple[str, tuple], float]:
  """Every sample of /metrics: (name, sorted label items) -> value."""
  u = urlparse(url)
  conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
  conn.request("GET", "/metrics")
  text = conn.getresponse().read().decode()
  conn.close()
  out = {}
  for fam in text_string_to_metric_families(text):
    for s in fam.samples:
      out[(s.name, tuple(sorted(s.labels.items())))] = s.value
  return out


def wait_for(cond, timeout: float = 30.0, what: str = "condition"):
  t0 = time.monotonic()
  while time.monotonic() - t0 < timeout:
    v = cond()
    if v:
      return v
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {what}")


def engine_drained(engine) -> bool:
  """Nothing open, no KV held anywhere (as of the engine's last snapshot)."""
  s = engine.snapshot
  return s.open == 0 and all(i.kv_used_tokens == 0 and not i.decoding and not i.transferring
                             for i in s.instances)


def engine_leaks(engine) -> list[str]:
  """What the engine still holds for ended requests (should be nothing once drained)."""
  run, ex = engine._run, engine._run.ex
  held = [f"{k}: {len(v)}" for k, v in (("records", run.records), ("live", run.live),
                                         ("why", run.why), ("flights", ex._flights),
                                         ("transfers", ex._transfers)) if v]
  for rep in ex.replicas.values():
    held += [f"{rep.name}.{k}: {len(v)}" for k, v in (("slot_of", rep.slot_of),
                                                       ("arrived", rep.arrived)) if v]
  held += [f"{i.name} held {len(i.held)}" for i in run.coord.instances if not i.idle]
  return held
