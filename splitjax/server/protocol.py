"""The OpenAI completions wire format: the request schema (strict: unknown
fields are errors) and the response / stream-chunk / error bodies.

Supported: ``prompt`` as text or token ids (one prompt; a one-element list of
either is accepted as the OpenAI client may send it), ``max_tokens``,
``temperature``, ``top_p``, ``top_k`` (an extension, as vLLM), ``stream``
(+ ``stream_options.include_usage``), ``stop`` (up to 4 strings), ``n`` = 1,
``echo`` = false, ``logprobs`` = null, ``model``, ``user``. Choices carry the
generated ``token_ids`` too (an extension, so clients can check tokens).
"""

from __future__ import annotations

import enum
import math
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

DEFAULT_MAX_TOKENS = 16        # OpenAI's default for completions
TokenId = Annotated[StrictInt, Field(ge=0)]


class ErrorType(enum.Enum):
  INVALID = "invalid_request_error"     # 400: the request is wrong
  NOT_FOUND = "not_found_error"         # 404
  OVERLOADED = "overloaded_error"       # 429 / 503: try later
  SERVER = "server_error"               # 500 / 503: ours


class StreamOptions(BaseModel):
  model_config = ConfigDict(extra="forbid")
  include_usage: StrictBool = False


class FailInstanceRequest(BaseModel):
  """POST /admin/fail_instance body: the instance to fail (e.g. ``token0``)."""
  model_config = ConfigDict(extra="forbid")
  instance: str


class CompletionRequest(BaseModel):
  """POST /v1/completions body (see the module docstring)."""
  model_config = ConfigDict(extra="forbid")

  prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
  model: str | None = None
  max_tokens: StrictInt | None = Field(DEFAULT_MAX_TOKENS, ge=1)
  temperature: float | None = Field(1.0, ge=0.0, le=2.0)
  top_p: float | None = Field(1.0, gt=0.0, le=1.0)
  top_k: StrictInt | None = Field(0, ge=0)
  stream: StrictBool | None = False
  stream_options: StreamOptions | None = None
  stop: str | list[str] | None = None
  n: StrictInt | None = Field(1, ge=1, le=1)
  echo: StrictBool | None = Field(False)
  logprobs: None = None
  user: str | None = None

  @field_validator("temperature", "top_p")
  @classmethod
  def _finite(cls, v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
      raise ValueError("must be a finite number")
    return v

  @field_validator("echo")
  @classmethod
  def _no_echo(cls, v: bool | None) -> bool | None:
    if v:
      raise ValueError("echo is not supported")
    return v

  @field_validator("stop")
  @classmethod
  def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
    stops = [v] if isinstance(v, str) else (v or [])
    if len(stops) > 4:
      raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
    if any(not s for s in stops):
      raise ValueError("stop sequences must not be empty")
    return v

  @field_validator("prompt")
  @classmethod
  def _one_prompt(cls, v):
    if isinstance(v, list) and v and isinstance(v[0], (str, list)):
      if len(v) != 1:
        raise ValueError(f"exactly one prompt per request is supported, got {len(v)}")
      v = v[0]
    if len(v) == 0:
      raise ValueError("the prompt is empty")
    if isinstance(v, str):
      try:
        v.encode("utf-8")
      except UnicodeEncodeError as e:
        raise ValueError(f"the prompt is not valid Unicode ({e.reason} at {e.start})") from None
    return v

  @property
  def stops(self) -> list[str]:
    return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def error_body(message: str, kind: ErrorType, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
  """The OpenAI error object."""
  return {"error": {"message": message, "type": kind.value, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
  """A readable message from pydantic's errors, and the first offending field."""
  parts, param = [], None
  for e in errors[:5]:
    loc = ".".join(str(x) for x in e.get("loc", ())) or "body"
    if param is None and e.get("loc"):
      param = str(e["loc"][0])
    msg = e.get("msg", "invalid")
    if e.get("type") == "extra_forbidden":
      msg = "unknown field"
    parts.append(f"{loc}: {msg}")
  return "; ".join(parts), param


def completion_body(request_id: str, model: str, created: int, text: str,
                    token_ids: list[int], finish_reason: str | None,
                    usage: dict | None) -> dict[str, Any]:
  """A completion (``usage`` given) or one stream chunk (``usage`` None)."""
  body = {"id": request_id, "object": "text_completion", "created": created, "model": model,
          "choices": [{"index": 0, "text": text, "logprobs": None,
                       "finish_reason": finish_reason, "token_ids": token_ids}]}
  if usage is not None:
    body["usage"] = usage
  return body


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


def now_s() -> int:
  return int(time.time())
