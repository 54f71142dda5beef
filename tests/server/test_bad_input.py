"""Bad requests get a 4xx with an OpenAI error body naming the problem, never
a 500; a hypothesis fuzz of the request body finds no 500 either."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.server.conftest import MODEL_NAME
from tests.server.helpers import post

CASES = [
    (b'{"prompt": "hi", "max_tokens": 2', 400, "malformed JSON"),
    (b'{"prompt": "\xff\xfe hi"}', 400, "not valid UTF-8"),
    (b"", 400, "malformed JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({"prompt": "hi", "bogus": 1}, 400, "bogus: unknown field"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**12}, 400, "context limit of 128"),
    ({"prompt": "hi", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"prompt": ""}, 400, "prompt is empty"),
    (b'{"prompt": "\\ud800 lone surrogate"}', 400, "not valid Unicode"),
    ({"prompt": []}, 400, "prompt is empty"),
    ({"max_tokens": 2}, 400, "prompt: Field required"),
    ({"prompt": "x" * 200, "max_tokens": 1}, 400, "longest prompt"),
    ({"prompt": [1, 512], "max_tokens": 1}, 400, "out of the vocabulary"),
    ({"prompt": [1, -3], "max_tokens": 1}, 400, "prompt"),
    ({"prompt": [True, 2], "max_tokens": 1}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "exactly one prompt"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "n": 2}, 400, "n"),
    ({"prompt": "hi", "echo": True}, 400, "echo is not supported"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({"prompt": "hi", "stop": [""]}, 400, "must not be empty"),
    ({"prompt": "hi", "model": "gpt-4"}, 404, "does not exist"),
]


@pytest.mark.parametrize("body,status,message", CASES, ids=[c[2] for c in CASES])
def test_bad_requests_get_a_clear_4xx(live, body, status, message):
  code, _, resp = post(live.url, body)
  assert code == status, resp
  err = resp["error"]
  assert message in err["message"], err
  assert err["type"] in ("invalid_request_error", "not_found_error")


def test_unknown_routes_and_methods(live):
  assert post(live.url, b"", path="/v1/nope", method="GET")[0] == 404
  assert post(live.url, b"", path="/v1/completions", method="GET")[0] == 405
  code, _, body = post(live.url, b"", path="/health", method="GET")
  assert code == 200 and body == {"status": "ok"}


TEXT = st.text(st.characters(exclude_categories=()), max_size=8)     # lone surrogates too
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=3),
                    max_leaves=6)
FIELDS = {
    "prompt": TEXT | st.lists(st.integers(-2, 600), max_size=20) | JSON,
    "max_tokens": st.integers(-3, 3) | st.sampled_from([10**9, 2**63, -2**63]) | JSON,
    "temperature": st.floats(allow_nan=True, allow_infinity=True) | JSON,
    "top_p": st.floats(-1, 2) | JSON,
    "stream": st.booleans() | JSON,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5) | JSON,
    "model": st.just(MODEL_NAME) | JSON,
    "n": st.integers(0, 3) | JSON,
    "unknown": JSON,
}


@st.composite
def bodies(draw):
  keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=5))
  body = {k: draw(FIELDS[k]) for k in keys}
  if body.get("max_tokens") is None and "max_tokens" in body:
    body["max_tokens"] = 2               # null means "to the context limit": slow, not bad
  raw = json.dumps(body, allow_nan=True).encode()
  if draw(st.booleans()) and raw:        # sometimes corrupt the bytes
    i = draw(st.integers(0, len(raw) - 1))
    raw = raw[:i] + draw(st.binary(min_size=1, max_size=3)) + raw[i + 1:]
  return raw


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(bodies())
def test_fuzzed_bodies_never_get_a_500(live, raw):
  code, _, resp = post(live.url, raw)
  assert code < 500, (raw, resp)
  assert code == 200 or "error" in resp, resp
