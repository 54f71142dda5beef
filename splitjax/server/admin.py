"""Operator routes (no authentication: bind the server to a trusted interface).

  POST /admin/fail_instance  {"instance": "token0"}   fail an instance in-process

Failing an instance is a fault injection: its work in flight is lost and every
request it touched is re-routed and recomputed from its prompt plus the tokens
it already emitted (``runtime.faults``), so streams complete. Answers 200 with
the requests resubmitted / failed, 400 for an unknown instance (or a bad body),
409 if it is already down, 503 if the engine is not running.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from splitjax.runtime.online import OnlineEngine
from splitjax.runtime.online_types import Overloaded
from splitjax.server import protocol as proto

TIMEOUT_S = 30.0       # the engine thread applies it within one pass


def add_admin_routes(app: FastAPI, engine: OnlineEngine, error: type) -> None:
  """Adds the routes above; ``error(status, message, kind, param)`` is the
  app's HTTP error exception."""

  @app.post("/admin/fail_instance")
  async def fail_instance(body: proto.FailInstanceRequest):
    try:
      done = engine.fail_instance(body.instance)
    except Overloaded as e:
      raise error(503, e.reason, proto.ErrorType.OVERLOADED) from None
    try:
      out = await asyncio.wait_for(asyncio.wrap_future(done), TIMEOUT_S)
    except KeyError:
      names = ", ".join(i.name for i in engine.snapshot.instances)
      raise error(400, f"unknown instance {body.instance!r}; instances: {names}",
                  proto.ErrorType.INVALID, "instance") from None
    except ValueError as e:
      raise error(409, str(e), proto.ErrorType.INVALID, "instance") from None
    return {"instance": out.instance, "resubmitted": list(out.resubmitted),
            "failed": list(out.failed)}
