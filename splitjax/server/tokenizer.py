"""Text <-> token ids for the HTTP server.

``load_tokenizer(checkpoint_dir, vocab_size)`` returns a Hugging Face
``tokenizer.json`` tokenizer (the ``tokenizers`` library) when the checkpoint
has one, else :class:`ByteTokenizer` (UTF-8 bytes are ids 0..255; for demo
models with random weights). Either way every id it produces is below the
model's ``vocab_size`` (checked at load). :class:`IncrementalDecoder` turns a
growing id sequence into text deltas, holding back an incomplete UTF-8
character; :class:`StopMatcher` finds stop strings in a stream, holding back
text that could be the start of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol, Sequence

REPLACEMENT = "\ufffd"


class TokenizerError(ValueError):
  """The tokenizer cannot serve this model (the message says why)."""


class Tokenizer(Protocol):
  name: str
  eos_ids: frozenset[int]

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (special tokens such as BOS added as the tokenizer says)."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``; ids it cannot render become U+FFFD."""


class ByteTokenizer:
  """Ids 0..255 are the bytes of UTF-8 text; ids >= 256 (a random model may
  emit them) decode to U+FFFD. No EOS."""
  name = "bytes"
  eos_ids: frozenset[int] = frozenset()

  def __init__(self, vocab_size: int):
    if vocab_size < 256:
      raise TokenizerError(f"the byte-level tokenizer needs a vocabulary of at least 256 ids, "
                           f"the model has {vocab_size}")

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    out, run = [], bytearray()
    for i in ids:
      if 0 <= i < 256:
        run.append(i)
      else:
        out.append(run.decode("utf-8", errors="replace") + REPLACEMENT)
        run = bytearray()
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


class HFTokenizer:
  """A Hugging Face ``tokenizer.json``; EOS ids from the checkpoint's
  ``generation_config.json`` / ``config.json`` (``eos_token_id``)."""

  def __init__(self, path: Path, vocab_size: int, eos_ids: frozenset[int]):
    from tokenizers import Tokenizer as _HF
    try:
      self._tok = _HF.from_file(str(path))
    except Exception as e:   # the library raises its own exception types
      raise TokenizerError(f"cannot read {path}: {e}") from e
    n = self._tok.get_vocab_size(with_added_tokens=True)
    if n > vocab_size:
      raise TokenizerError(f"{path} has {n} tokens but the model only {vocab_size}")
    self.name, self.eos_ids = str(path), eos_ids

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=True).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(checkpoint_dir: str | None, vocab_size: int) -> Tokenizer:
  """``checkpoint_dir/tokenizer.json`` if it exists, else the byte tokenizer."""
  if checkpoint_dir:
    d = Path(checkpoint_dir)
    if (d / "tokenizer.json").is_file():
      return HFTokenizer(d / "tokenizer.json", vocab_size, _eos_ids(d))
  return ByteTokenizer(vocab_size)


def _eos_ids(d: Path) -> frozenset[int]:
  for name in ("generation_config.json", "config.json"):
    f = d / name
    if f.is_file():
      try:
        eos = json.loads(f.read_text()).get("eos_token_id")
      except (ValueError, AttributeError):
        continue
      if isinstance(eos, int):
        return frozenset({eos})
      if isinstance(eos, list) and all(isinstance(e, int) for e in eos):
        return frozenset(eos)
  return frozenset()


class IncrementalDecoder:
  """Text deltas of a growing id sequence: ``push(id)`` returns the new text
  (possibly "" while a multi-token character is incomplete), ``flush()`` the
  rest. The concatenated deltas equal ``tokenizer.decode(all ids)`` up to
  tokenizers whose decoding of a suffix depends on far context."""

  def __init__(self, tokenizer: Tokenizer):
    self.tok, self.ids = tokenizer, []
    self.prefix = self.read = 0        # ids[prefix:read] were decoded already

  def push(self, token_id: int) -> str:
    self.ids.append(token_id)
    before = self.tok.decode(self.ids[self.prefix:self.read])
    now = self.tok.decode(self.ids[self.prefix:])
    if len(now) > len(before) and not now.endswith(REPLACEMENT):
      self.prefix, self.read = self.read, len(self.ids)
      return now[len(before):]
    return ""

  def flush(self) -> str:
    before = self.tok.decode(self.ids[self.prefix:self.read])
    now = self.tok.decode(self.ids[self.prefix:])
    self.prefix = self.read = len(self.ids)
    return now[len(before):]


class StopMatcher:
  """Cuts a text stream at the first of ``stops``. ``feed(delta)`` returns
  (text safe to send, stopped); text that could begin a stop string is held
  until it cannot (``flush()`` returns it at the end)."""

  def __init__(self, stops: Sequence[str]):
    self.stops = [s for s in stops if s]
    self.hold = max((len(s) for s in self.stops), default=1) - 1
    self.pending = ""

  def feed(self, delta: str) -> tuple[str, bool]:
    self.pending += delta
    if not self.stops:
      out, self.pending = self.pending, ""
      return out, False
    hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
    if hits:
      out, self.pending = self.pending[:min(hits)], ""
      return out, True
    cut = max(0, len(self.pending) - self.hold)
    out, self.pending = self.pending[:cut], self.pending[cut:]
    return out, False

  def flush(self) -> str:
    out, self.pending = self.pending, ""
    return out
