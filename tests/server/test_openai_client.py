"""The official openai client against a live server: completions and streams
give the greedy tokens of Cluster.generate; stop strings; a client that goes
away mid-stream frees everything its request held."""


import pytest

openai = pytest.importorskip("openai")

from splitjax.server.tokenizer import ByteTokenizer  # noqa: E402
from tests.server.conftest import MODEL_NAME  # noqa: E402
from tests.server.helpers import engine_drained, engine_leaks, metrics, open_stream, wait_for  # noqa: E402

PROMPTS = [[1, 2, 3, 4, 5], list(range(10, 50)), [300, 7]]
NEW = 12


@pytest.fixture(scope="module")
def client(live):
  return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(live):
  return live.cluster.generate(PROMPTS + [list(b"Hello, splitjax!")], NEW)


def test_completion_and_stream_match_cluster_generate(client, live, reference):
  for prompt, want in zip(PROMPTS, reference):
    c = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=NEW,
                                  temperature=0)
    ch = c.choices[0]
    assert ch.token_ids == want and ch.finish_reason == "length"
    assert ch.text == ByteTokenizer(512).decode(want)
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (len(prompt), NEW)
  ids, text, reasons = [], "", []
  for chunk in client.completions.create(model=MODEL_NAME, prompt="Hello, splitjax!",
                                         max_tokens=NEW, temperature=0, stream=True):
    ids += chunk.choices[0].token_ids
    text += chunk.choices[0].text
    reasons.append(chunk.choices[0].finish_reason)
  assert ids == reference[-1]
  assert text == ByteTokenizer(512).decode(reference[-1])
  assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
  assert [m.id for m in client.models.list()] == [MODEL_NAME]


def test_stop_string_cuts_the_text(client, reference):
  text = ByteTokenizer(512).decode(reference[0])
  k = next(i for i in range(1, len(text)) if text[i] != "\ufffd" and text[i] not in text[:i])
  c = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=NEW,
                                temperature=0, stop=[text[k]])
  assert c.choices[0].text == text[:k] and c.choices[0].finish_reason == "stop"


def test_sampled_requests_complete(client):
  c = client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=6, temperature=0.8,
                                top_p=0.9)
  assert c.usage.completion_tokens == 6 and len(c.choices[0].token_ids) == 6


def test_a_client_going_away_mid_stream_frees_its_request(live):
  before = metrics(live.url).get(("splitjax_requests_total", (("reason", "aborted"),)), 0)
  conn, _ = open_stream(live.url, {"prompt": [5] * 20, "max_tokens": 100, "temperature": 0})
  conn.sock.close()          # gone without reading the rest
  conn.close()
  wait_for(lambda: metrics(live.url).get(
      ("splitjax_requests_total", (("reason", "aborted"),)), 0) == before + 1, what="abort")
  wait_for(lambda: engine_drained(live.server.engine), what="slot and KV freed")
  wait_for(lambda: not engine_leaks(live.server.engine), what="nothing held")
