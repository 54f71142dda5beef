"""Put a Cluster behind HTTP: build the engine, metrics and app; run uvicorn in
the calling thread (scripts/serve.py) or a background one (tests, load test).

  server = build_server(cluster, tokenizer, limits=OnlineLimits(max_waiting=32))
  with ServerThread(server.app, port=0) as http:      # engine started / stopped too
    requests.post(http.url + "/v1/completions", ...)
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Mapping

import uvicorn
from fastapi import FastAPI

from splitjax.accounts import InstanceRates
from splitjax.runtime.cluster import Cluster
from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import OnlineLimits
from splitjax.server.app import create_app
from splitjax.server.metrics import ServerMetrics
from splitjax.server.run_record import FanOut, RunRecorder
from splitjax.server.tokenizer import Tokenizer


@dataclasses.dataclass
class Server:
  """An app and the engine behind it (the engine is not started yet);
  ``recorder`` keeps the ended requests' records (summary.json, requests.csv)."""
  app: FastAPI
  engine: OnlineEngine
  metrics: ServerMetrics
  tokenizer: Tokenizer
  model_name: str
  recorder: RunRecorder


def build_server(cluster: Cluster, tokenizer: Tokenizer, *, model_name: str | None = None,
                 limits: OnlineLimits = OnlineLimits(),
                 rates: Mapping[str, InstanceRates] | None = None) -> Server:
  """Engine (fresh scheduling state) + metrics + run recorder + app for ``cluster``."""
  holder: list[OnlineEngine] = []
  metrics, recorder = ServerMetrics(lambda: holder[0].snapshot, rates), RunRecorder()
  engine = cluster.online(limits, FanOut(metrics, recorder))
  holder.append(engine)
  name = model_name or cluster.cfg.model.name
  return Server(create_app(engine, tokenizer, metrics, name), engine, metrics, tokenizer, name,
                recorder)


def uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "warning",
                   access_log: bool = False) -> uvicorn.Config:
  """One worker, one event loop; keep-alive and limits at uvicorn's defaults."""
  return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                        lifespan="off", timeout_graceful_shutdown=5)


class ServerThread:
  """uvicorn on a background thread (port 0: any free port); starts ``engine``
  first and stops it after the HTTP server is down."""

  def __init__(self, app: FastAPI, engine: OnlineEngine | None = None, host: str = "127.0.0.1",
               port: int = 0, log_level: str = "warning"):
    self.engine = engine
    self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level))
    self._thread = threading.Thread(target=self.server.run, name="splitjax-http", daemon=True)
    self.host = host

  def start(self, timeout_s: float = 30.0) -> "ServerThread":
    if self.engine is not None and not self.engine.alive:
      self.engine.start()
    self._thread.start()
    deadline = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
      if self.server.started or not self._thread.is_alive():
        break
      deadline.wait(0.02)
    if not self.server.started:
      raise RuntimeError("the HTTP server did not start")
    return self

  @property
  def port(self) -> int:
    return self.server.servers[0].sockets[0].getsockname()[1]

  @property
  def url(self) -> str:
    return f"http://{self.host}:{self.port}"

  def stop(self, timeout_s: float = 10.0) -> None:
    self.server.should_exit = True
    self._thread.join(timeout_s)
    if self.engine is not None:
      self.engine.stop()

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
