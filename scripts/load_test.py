"""Bounded loopback load test of the HTTP server: streaming clients past capacity.

  python scripts/load_test.py --config configs/split.py --rate 40 --duration_s 30
  python scripts/load_test.py --url http://127.0.0.1:8000 --rate 10 --duration_s 10

Without ``--url`` it starts ``scripts/serve.py --http_port`` itself (warm-up
included, loopback only) and stops it at the end. Requests arrive as a Poisson
process at ``--rate`` per second for ``--duration_s``, each a streaming
completion (official ``openai`` client, no retries) with a random byte prompt
and ``--max_tokens`` greedy tokens; at most ``--clients`` are in flight (an
arrival finding all clients busy is counted, not sent). Then it waits at most
``--drain_s`` for the open streams and stops. Every request ends as
completed (a full stream, finish_reason and all its tokens), refused (429 /
503 with a reason) or failed (anything else: errors, cut streams, timeouts).
Reports p50 / p99 TTFT and E2E of the completed ones, the server's RSS before
/ peak / after, and the server's own request counters; writes JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from splitjax import cli  # noqa: E402

_URL = flags.DEFINE_string("url", None, "Target server; default: start scripts/serve.py.")
_CONFIG = flags.DEFINE_string("config", "configs/split.py", "Serving config (own server).")
_PORT = flags.DEFINE_integer("port", 8123, "Port of the server it starts.")
_MAX_WAITING = flags.DEFINE_integer("max_waiting", 16, "Own server's --max_waiting.")
_MAX_OPEN = flags.DEFINE_integer("max_open", 48, "Own server's --max_open.")
_RATE = flags.DEFINE_float("rate", 40.0, "Arrivals per second (Poisson).")
_DURATION = flags.DEFINE_float("duration_s", 30.0, "How long requests arrive.")
_DRAIN = flags.DEFINE_float("drain_s", 120.0, "Longest wait for open streams after that.")
_CLIENTS = flags.DEFINE_integer("clients", 64, "Concurrent streaming clients at most.")
_PROMPT = flags.DEFINE_string("prompt_tokens", "32,256", "Prompt length range (bytes = tokens).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 32, "Tokens per request.")
_SEED = flags.DEFINE_integer("seed", 0, "Arrivals and prompts.")
_OUTPUT = flags.DEFINE_string("output_json", "runs/load_test.json", "Where the report goes.")
_STARTUP = flags.DEFINE_float("startup_s", 600.0, "Longest wait for the server to come up.")


@dataclasses.dataclass
class Outcome:
  """One request: kind is completed / refused_429 / refused_503 / failed / skipped."""
  kind: str
  ttft_s: float | None = None
  e2e_s: float | None = None
  tokens: int = 0
  detail: str = ""


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Outcome:
  """A streaming completion, classified (never raises)."""
  import openai
  t0 = time.perf_counter()
  ttft, tokens, finish = None, 0, None
  try:
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, stream=True)
    async for chunk in stream:
      ch = chunk.choices[0]
      n = len(getattr(ch, "token_ids", None) or [])
      if n and ttft is None:
        ttft = time.perf_counter() - t0
      tokens += n
      finish = ch.finish_reason or finish
  except openai.APIStatusError as e:
    if e.status_code in (429, 503) and tokens == 0:
      return Outcome(f"refused_{e.status_code}", detail=str(e.message)[:200])
    return Outcome("failed", detail=f"HTTP {e.status_code}: {str(e.message)[:200]}")
  except Exception as e:       # connection errors, cut streams, timeouts
    return Outcome("failed", tokens=tokens, detail=f"{type(e).__name__}: {e}"[:200])
  if finish is None or (finish == "length" and tokens != max_tokens):
    return Outcome("failed", tokens=tokens, detail=f"incomplete: {tokens} tokens, {finish}")
  return Outcome("completed", ttft, time.perf_counter() - t0, tokens)


async def drive(url: str, model: str) -> tuple[list[Outcome], float]:
  """Poisson arrivals for --duration_s, then drain; returns outcomes and seconds."""
  import openai
  rng = random.Random(_SEED.value)
  lo, hi = (int(x) for x in _PROMPT.value.split(","))
  client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                              timeout=_DRAIN.value + _DURATION.value)
  tasks, outcomes = set(), []
  t0 = time.perf_counter()
  next_at = rng.expovariate(_RATE.value)
  while next_at < _DURATION.value:
    await asyncio.sleep(max(0.0, next_at - (time.perf_counter() - t0)))
    next_at += rng.expovariate(_RATE.value)
    if len(tasks) >= _CLIENTS.value:
      outcomes.append(Outcome("skipped", detail="all clients busy"))
      continue
    prompt = "".join(chr(rng.randint(97, 122)) for _ in range(rng.randint(lo, hi)))
    task = asyncio.create_task(one_request(client, model, prompt, _MAX_TOKENS.value))
    tasks.add(task)
    task.add_done_callback(lambda t: (tasks.discard(t),
                                      t.cancelled() or outcomes.append(t.result())))
  if tasks:
    done, pending = await asyncio.wait(set(tasks), timeout=_DRAIN.value)
    for t in pending:
      t.cancel()
      outcomes.append(Outcome("failed", detail="still open after --drain_s"))
  await client.close()
  return outcomes, time.perf_counter() - t0


class RssSampler:
  """Peak / last resident set size of a process (from /proc) on a thread."""

  def __init__(self, pid: int | None):
    self.pid, self.peak, self.samples = pid, 0, []
    self._stop = threading.Event()
    self._t = threading.Thread(target=self._run, daemon=True)

  def read(self) -> int:
    if self.pid is None:
      return 0
    try:
      for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
    except OSError:
      pass
    return 0

  def _run(self):
    while not self._stop.wait(0.5):
      v = self.read()
      self.peak = max(self.peak, v)
      self.samples.append(v)

  def __enter__(self):
    self._t.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._t.join()


def start_server() -> subprocess.Popen:
  cmd = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--config", _CONFIG.value,
         "--http_port", str(_PORT.value), "--max_waiting", str(_MAX_WAITING.value),
         "--max_open", str(_MAX_OPEN.value), "--noprogress"]
  log = open(Path(_OUTPUT.value).with_suffix(".server.log"), "w")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{_PORT.value}"
  deadline = time.monotonic() + _STARTUP.value
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited ({proc.returncode}); see {log.name}")
    if get_json(url + "/health") == {"status": "ok"}:
      return proc
    time.sleep(1.0)
  stop_server(proc)
  raise RuntimeError(f"the server did not come up in {_STARTUP.value} s")


def stop_server(proc: subprocess.Popen) -> int:
  proc.send_signal(signal.SIGINT)
  try:
    return proc.wait(30)
  except subprocess.TimeoutExpired:
    proc.kill()
    return proc.wait()


def get_json(url: str):
  try:
    with urllib.request.urlopen(url, timeout=5) as r:
      return json.loads(r.read())
  except (OSError, ValueError):
    return None


def server_counters(url: str) -> dict[str, float]:
  """The server's request / refusal counters from /metrics."""
  from prometheus_client.parser import text_string_to_metric_families
  try:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
      text = r.read().decode()
  except OSError:
    return {}
  out = {}
  for fam in text_string_to_metric_families(text):
    for s in fam.samples:
      if s.name in ("splitjax_requests_total", "splitjax_http_refused_total"):
        out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
  return out


def pct(values: list[float], q: float) -> float | None:
  if not values:
    return None
  v = sorted(values)
  return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def report(outcomes: list[Outcome], seconds: float, rss: dict, counters: dict,
           alive: bool) -> dict:
  kinds = {}
  for o in outcomes:
    kinds[o.kind] = kinds.get(o.kind, 0) + 1
  done = [o for o in outcomes if o.kind == "completed"]
  ttft, e2e = [o.ttft_s for o in done], [o.e2e_s for o in done]
  return {
      "settings": {"rate": _RATE.value, "duration_s": _DURATION.value,
                   "clients": _CLIENTS.value, "prompt_tokens": _PROMPT.value,
                   "max_tokens": _MAX_TOKENS.value, "config": _CONFIG.value,
                   "url": _URL.value, "max_waiting": _MAX_WAITING.value,
                   "max_open": _MAX_OPEN.value},
      "sent": sum(o.kind != "skipped" for o in outcomes), "outcomes": kinds,
      "wall_s": seconds, "completed_per_s": len(done) / seconds if seconds else 0.0,
      "tokens_per_s": sum(o.tokens for o in done) / seconds if seconds else 0.0,
      "ttft_s": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99)},
      "e2e_s": {"p50": pct(e2e, 50), "p99": pct(e2e, 99)},
      "failures": sorted({o.detail for o in outcomes if o.kind == "failed"})[:10],
      "server_rss_bytes": rss, "server_alive_after": alive, "server_counters": counters,
  }


def main(argv):
  del argv
  for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
    logging.getLogger(name).setLevel(logging.WARNING)     # no line per request
  Path(_OUTPUT.value).parent.mkdir(parents=True, exist_ok=True)
  proc = None if _URL.value else start_server()
  url = _URL.value or f"http://127.0.0.1:{_PORT.value}"
  try:
    model = get_json(url + "/v1/models")["data"][0]["id"]
    with RssSampler(proc.pid if proc else None) as rss:
      before = rss.read()
      outcomes, seconds = asyncio.run(drive(url, model))
      time.sleep(1.0)
      after = rss.read()
    alive = get_json(url + "/health") == {"status": "ok"}
    result = report(outcomes, seconds, {"before": before, "peak": max(rss.peak, after),
                                        "after": after}, server_counters(url), alive)
  finally:
    if proc is not None:
      result_code = stop_server(proc)
  if proc is not None:
    result["server_exit_code"] = result_code
  Path(_OUTPUT.value).write_text(json.dumps(result, indent=2))
  print(json.dumps({k: result[k] for k in ("sent", "outcomes", "ttft_s", "e2e_s",
                                           "completed_per_s", "server_rss_bytes")}, indent=2))
  print(f"wrote {_OUTPUT.value}")
  return 0 if alive and not result["outcomes"].get("failed") else 1


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
