"""The FastAPI app: OpenAI-compatible completions over an OnlineEngine.

  POST /v1/completions   text or token-id prompt; JSON or SSE stream
  GET  /v1/models        the one served model
  GET  /health           200 while the engine thread runs, else 503
  GET  /metrics          Prometheus text (server.metrics)
  POST /admin/fail_instance   fault injection (server.admin)

Contract: a request that cannot be served gets a 4xx with an OpenAI error
body naming the problem (malformed / non-UTF-8 JSON, unknown fields, bad
values, empty prompt, over the context: 400; unknown model: 404); a full
queue 429 (Retry-After), a stopped engine 503. A client that goes away
(disconnect, or a cancelled stream) aborts its request in the engine, which
frees its prompt work, KV slot and transfer. Handlers never block the event
loop: engine events arrive through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from splitjax.config import SamplingConfig
from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import (EndEvent, EndReason, Generation, InvalidRequest,
                                           Overloaded)
from splitjax.server import protocol as proto
from splitjax.server.admin import add_admin_routes
from splitjax.server.metrics import ServerMetrics
from splitjax.server.stream import Disconnected, Reader
from splitjax.server.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class HTTPError(Exception):
  """An error response: status, message, OpenAI error type, offending field."""

  def __init__(self, status: int, message: str, kind: proto.ErrorType = proto.ErrorType.INVALID,
               param: str | None = None, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.kind, self.param = status, message, kind, param
    self.headers = headers

  def response(self) -> JSONResponse:
    return JSONResponse(proto.error_body(self.message, self.kind, self.param), self.status,
                        headers=self.headers)


def create_app(engine: OnlineEngine, tokenizer: Tokenizer, metrics: ServerMetrics,
               model_name: str) -> FastAPI:
  """The app for ``engine`` (started and stopped by the caller)."""
  app = FastAPI(title="splitjax", summary="OpenAI-compatible completions on a splitjax cluster")
  served = _Completions(engine, tokenizer, metrics, model_name)

  @app.exception_handler(HTTPError)
  async def _http_error(request: Request, e: HTTPError):
    return e.response()

  @app.exception_handler(RequestValidationError)
  async def _invalid(request: Request, e: RequestValidationError):
    msg, param = proto.validation_message(e.errors())
    return HTTPError(400, msg, param=param).response()

  @app.exception_handler(StarletteHTTPException)
  async def _starlette(request: Request, e: StarletteHTTPException):
    kind = proto.ErrorType.NOT_FOUND if e.status_code == 404 else proto.ErrorType.INVALID
    return HTTPError(e.status_code, str(e.detail), kind).response()

  @app.exception_handler(Disconnected)
  async def _gone(request: Request, e: Disconnected):
    return Response(status_code=499)      # nobody reads it (nginx's "client closed")

  @app.exception_handler(Exception)
  async def _bug(request: Request, e: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return HTTPError(500, f"internal error: {type(e).__name__}", proto.ErrorType.SERVER).response()

  @app.post("/v1/completions")
  async def completions(request: Request):
    return await served.handle(request)

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{
        "id": model_name, "object": "model", "created": 0, "owned_by": "splitjax",
        "max_model_len": engine.model.max_context_tokens}]}

  @app.get("/health")
  async def health():
    if engine.alive:
      return {"status": "ok"}
    return JSONResponse({"status": "stopped", "error": engine.error}, 503)

  @app.get("/metrics")
  async def prometheus():
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

  add_admin_routes(app, engine, HTTPError)
  return app


class _Completions:
  """POST /v1/completions: parse, submit, answer as JSON or as an SSE stream."""

  def __init__(self, engine: OnlineEngine, tokenizer: Tokenizer, metrics: ServerMetrics,
               model_name: str):
    self.engine, self.tok, self.metrics, self.model = engine, tokenizer, metrics, model_name

  async def handle(self, request: Request):
    try:
      req = self._parse(await request.body())
      gen = self._generation(req)
      loop, q = asyncio.get_running_loop(), asyncio.Queue()
      rid = self._submit(gen, lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
    except HTTPError as e:
      self.metrics.refuse(e.status, e.kind.value)
      raise
    reader = Reader(self.engine, rid, q, self.tok, req.stops)
    try:
      first = await reader.next(request)
    except BaseException:
      reader.abort()
      raise
    if isinstance(first, EndEvent) and not first.record.tokens:
      raise _end_error(first)
    if req.stream:
      return StreamingResponse(self._sse(reader, first, req, len(gen.prompt_ids)),
                               media_type="text/event-stream",
                               headers={"Cache-Control": "no-cache"})
    return await self._whole(reader, first, request, len(gen.prompt_ids))

  def _parse(self, body: bytes) -> proto.CompletionRequest:
    try:
      obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise HTTPError(400, f"the body is not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
      raise HTTPError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") \
          from None
    if not isinstance(obj, dict):
      raise HTTPError(400, f"the body must be a JSON object, got {type(obj).__name__}")
    try:
      req = proto.CompletionRequest.model_validate(obj)
    except ValidationError as e:
      msg, param = proto.validation_message(e.errors())
      raise HTTPError(400, msg, param=param) from None
    if req.model is not None and req.model != self.model:
      raise HTTPError(404, f"model {req.model!r} does not exist; this server serves "
                      f"{self.model!r}", proto.ErrorType.NOT_FOUND, "model")
    return req

  def _generation(self, req: proto.CompletionRequest) -> Generation:
    try:
      ids = self.tok.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
    except Exception as e:       # tokenizers raise their own types
      raise HTTPError(400, f"the prompt cannot be tokenized: {e}", param="prompt") from None
    if not ids:
      raise HTTPError(400, "the prompt encodes to no tokens", param="prompt")
    limit = self.engine.model.max_context_tokens
    max_tokens = req.max_tokens if req.max_tokens is not None else max(1, limit - len(ids))
    sampling = SamplingConfig(temperature=req.temperature if req.temperature is not None else 1.0,
                              top_k=req.top_k or 0,
                              top_p=req.top_p if req.top_p is not None else 1.0)
    return Generation(tuple(ids), max_tokens, sampling, self.tok.eos_ids)

  def _submit(self, gen: Generation, sink) -> int:
    try:
      return self.engine.submit(gen, sink)
    except InvalidRequest as e:
      raise HTTPError(400, str(e), param="prompt") from None
    except Overloaded as e:
      if e.retryable:
        raise HTTPError(429, e.reason, proto.ErrorType.OVERLOADED,
                        headers={"Retry-After": "1"}) from None
      raise HTTPError(503, e.reason, proto.ErrorType.OVERLOADED) from None

  async def _whole(self, reader: Reader, ev, request: Request, n_prompt: int) -> dict:
    try:
      while not isinstance(ev, EndEvent) and not reader.stopped:
        reader.feed(ev)
        ev = await reader.next(request)
    except BaseException:
      reader.abort()
      raise
    if isinstance(ev, EndEvent) and ev.reason not in (EndReason.LENGTH, EndReason.STOP):
      raise _end_error(ev)
    reader.finish(ev)
    return proto.completion_body(reader.cid, self.model, reader.created, reader.text, reader.ids,
                                 reader.finish_reason(ev),
                                 proto.usage_body(n_prompt, len(reader.ids)))

  async def _sse(self, reader: Reader, ev, req: proto.CompletionRequest, n_prompt: int):
    chunk = lambda text, ids, why: _sse_data(proto.completion_body(
        reader.cid, self.model, reader.created, text, ids, why, None))
    try:
      while not isinstance(ev, EndEvent) and not reader.stopped:
        text, ids = reader.feed(ev)
        if text or ids:
          yield chunk(text, ids, None)
        ev = await reader.next(None)
      if isinstance(ev, EndEvent) and ev.reason not in (EndReason.LENGTH, EndReason.STOP):
        yield _sse_data(_end_error(ev).response_body())
      else:
        yield chunk(reader.finish(ev), [], reader.finish_reason(ev))
        if req.stream_options is not None and req.stream_options.include_usage:
          body = proto.completion_body(reader.cid, self.model, reader.created, "", [], None,
                                       proto.usage_body(n_prompt, len(reader.ids)))
          body["choices"] = []
          yield _sse_data(body)
      yield b"data: [DONE]\n\n"
    finally:
      reader.abort()          # no-op when the request ended


def _sse_data(obj: dict) -> bytes:
  return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class _EndError(HTTPError):
  def response_body(self) -> dict:
    return proto.error_body(self.message, self.kind, self.param)


def _end_error(ev: EndEvent) -> _EndError:
  """The error for a request the engine ended without completing it."""
  if ev.reason == EndReason.REJECTED:
    return _EndError(400, f"rejected: {ev.detail}")
  return _EndError(503, f"{ev.reason.value}: {ev.detail}", proto.ErrorType.SERVER)

