"""One request's event stream as the HTTP handler reads it: engine events from
an asyncio queue, text deltas (incremental detokenizing), stop strings (the
engine is told to ``finish``), and an abort when the reader gives up."""

from __future__ import annotations

import asyncio
import time

from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import EndEvent, EndReason, StreamEvent, TokenEvent
from splitjax.server.tokenizer import IncrementalDecoder, StopMatcher, Tokenizer

DISCONNECT_POLL_S = 0.5


class Disconnected(Exception):
  """The client went away while its request was running (it was aborted)."""


class Reader:
  """Reads request ``rid``'s events from ``queue`` (fed by the engine's sink).

  ``text`` / ``ids``: what was produced so far (text stops before a stop
  string); ``stopped``: a stop string was found (the engine was told to finish).
  Call :meth:`abort` when giving up; it is a no-op once the request ended.
  """

  def __init__(self, engine: OnlineEngine, rid: int, queue: asyncio.Queue, tokenizer: Tokenizer,
               stops: list[str]):
    self.engine, self.rid, self.q = engine, rid, queue
    self.cid, self.created = f"cmpl-{rid}", int(time.time())
    self.ids: list[int] = []
    self.text = ""
    self.decoder, self.matcher = IncrementalDecoder(tokenizer), StopMatcher(stops)
    self.stopped = self.ended = False

  async def next(self, request=None) -> StreamEvent:
    """The next event; with a starlette ``request``, checks for a disconnect
    every DISCONNECT_POLL_S while waiting and raises Disconnected (after aborting)."""
    while True:
      try:
        ev = await asyncio.wait_for(self.q.get(), DISCONNECT_POLL_S)
      except asyncio.TimeoutError:
        if request is not None and await request.is_disconnected():
          self.abort()
          raise Disconnected(self.cid) from None
        continue
      if isinstance(ev, EndEvent):
        self.ended = True
      return ev

  def feed(self, ev: TokenEvent) -> tuple[str, list[int]]:
    """Takes one token: (text now safe to send, [its id])."""
    self.ids.append(ev.token_id)
    out, hit = self.matcher.feed(self.decoder.push(ev.token_id))
    self.text += out
    if hit:
      self.stopped = True
      self.engine.finish(self.rid)
    return out, [ev.token_id]

  def finish(self, ev: StreamEvent) -> str:
    """Text still held back at the end (none after a stop string)."""
    if self.stopped:
      return ""
    out, hit = self.matcher.feed(self.decoder.flush())
    if hit:
      self.stopped = True
    else:
      out += self.matcher.flush()
    self.text += out
    return out

  def finish_reason(self, ev: StreamEvent) -> str:
    """OpenAI ``finish_reason``: "stop" (stop string or stop token) or "length"."""
    if self.stopped or (isinstance(ev, EndEvent) and ev.reason == EndReason.STOP):
      return "stop"
    return "length"

  def abort(self) -> None:
    if not (self.ended or self.stopped):
      self.ended = True
      self.engine.abort(self.rid)
