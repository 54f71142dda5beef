"""Tokenizers of the server: the byte fallback, a Hugging Face tokenizer.json
(with EOS from the checkpoint config), incremental decoding and stop strings."""

import json

import pytest

from splitjax.server.tokenizer import (ByteTokenizer, HFTokenizer, IncrementalDecoder,
                                       StopMatcher, TokenizerError, load_tokenizer)


def _hf_dir(tmp_path, eos=None):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["hello world, héllo wörld", "splitjax serves tokens"] * 20, trainer)
  tok.save(str(tmp_path / "tokenizer.json"))
  if eos is not None:
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": eos}))
  return tmp_path


def test_byte_tokenizer_round_trips_and_streams_utf8():
  tok = ByteTokenizer(512)
  text = "héllo wörld ✓"
  ids = tok.encode(text)
  assert tok.decode(ids) == text and max(ids) < 256
  dec = IncrementalDecoder(tok)
  deltas = [dec.push(i) for i in ids]
  assert "".join(deltas) + dec.flush() == text
  assert "" in deltas                  # a multi-byte character waited for its last byte
  assert tok.decode([104, 300, 105]) == "h\ufffdi"
  with pytest.raises(TokenizerError, match="at least 256"):
    ByteTokenizer(100)


def test_hf_tokenizer_json_is_used_when_present(tmp_path):
  d = _hf_dir(tmp_path, eos=1)
  tok = load_tokenizer(str(d), vocab_size=512)
  assert isinstance(tok, HFTokenizer) and tok.eos_ids == frozenset({1})
  ids = tok.encode("hello wörld")
  assert tok.decode(ids) == "hello wörld" and max(ids) < 300
  dec = IncrementalDecoder(tok)
  assert "".join(dec.push(i) for i in ids) + dec.flush() == "hello wörld"
  with pytest.raises(TokenizerError, match="but the model only 100"):
    load_tokenizer(str(d), vocab_size=100)
  assert isinstance(load_tokenizer(str(tmp_path / "none"), 512), ByteTokenizer)
  assert isinstance(load_tokenizer(None, 512), ByteTokenizer)


def test_stop_matcher_holds_back_possible_stops():
  m = StopMatcher(["END", "\n\n"])
  assert m.feed("abc E") == ("abc", False)     # holds len("END") - 1 characters
  assert m.feed("N") == (" ", False)
  assert m.feed("Dxyz") == ("", True)           # cut before the stop string
  m = StopMatcher([])
  assert m.feed("abc") == ("abc", False) and m.flush() == ""
  m = StopMatcher(["zz"])
  assert m.feed("az") == ("a", False) and m.flush() == "z"
