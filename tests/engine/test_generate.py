"""Generator: split (both transfer modes) == single == transformers' greedy generate."""

import dataclasses

import pytest

from splitjax.config import (EngineConfig, GenerateConfig, GenerateMode, MeshConfig,
                             SamplingConfig, TransferMode)
from splitjax.engine.engine import PromptError
from splitjax.engine.generate import Generator
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.params import split_model
from tests import hf_models

PROMPTS = [[1, 2, 3, 4, 5], [300, 7], list(range(10, 50)), [42] * 17, [8, 9, 10]]
ENGINE = EngineConfig(prefill_buckets=(16, 64, 128), attention_chunk=32, decode_slots=4,
                      max_cache_len=128, layer_group_size=1, layerwise_min_tokens=32)


def _gen(path, mode, transfer, prefill_mesh=MeshConfig(tp=2), decode_mesh=MeshConfig(
    tp=1, dp=2, first_device=4)):
  model = load_hf_llama(path)
  defs, params = split_model(model)
  cfg = GenerateConfig(model=model.cfg, prefill_mesh=prefill_mesh, decode_mesh=decode_mesh,
                       engine=ENGINE, mode=mode, transfer=transfer, max_new_tokens=12)
  return Generator(cfg, defs, params)


@pytest.fixture(scope="module")
def hf_reference(hf_gqa_dir):
  hf = hf_models.load_hf(hf_gqa_dir)
  return [hf_models.hf_greedy(hf, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("mode,transfer", [
    (GenerateMode.SINGLE, TransferMode.AUTO),
    (GenerateMode.SPLIT, TransferMode.SERIALIZED),
    (GenerateMode.SPLIT, TransferMode.LAYERWISE),
    (GenerateMode.SPLIT, TransferMode.AUTO),
])
def test_greedy_matches_transformers(hf_gqa_dir, hf_reference, mode, transfer):
  # 5 prompts on 4 slots: two waves
  result = _gen(hf_gqa_dir, mode, transfer).generate(PROMPTS)
  assert result.tokens == hf_reference
  assert result.kv_bytes > 0


def test_small_prefill_budget_splits_waves_same_tokens(hf_gqa_dir, hf_reference):
  gen = _gen(hf_gqa_dir, GenerateMode.SPLIT, TransferMode.AUTO)
  gen.cfg = dataclasses.replace(gen.cfg, prefill_token_budget=64)
  # wave 1 = prompts of 5, 2, 40, 17 tokens: buckets 16,16 | 64 | 64 -> three prefill programs
  assert gen._prefill_groups(PROMPTS[:4]) == [[0, 1], [2], [3]]
  assert gen.generate(PROMPTS).tokens == hf_reference


def test_tied_model_split_matches_transformers(hf_tied_dir):
  hf = hf_models.load_hf(hf_tied_dir)
  prompts = [[3, 1, 4, 1, 5], list(range(60))]
  want = [hf_models.hf_greedy(hf, p, 8) for p in prompts]
  gen = _gen(hf_tied_dir, GenerateMode.SPLIT, TransferMode.LAYERWISE,
             MeshConfig(tp=4), MeshConfig(tp=2, first_device=4))
  assert gen.generate(prompts, max_new_tokens=8).tokens == want


def test_sampled_generation_is_reproducible_and_in_vocab(hf_gqa_dir):
  gen = _gen(hf_gqa_dir, GenerateMode.SPLIT, TransferMode.AUTO)
  s = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, seed=5)
  a = gen.generate(PROMPTS[:3], sampling=s).tokens
  b = gen.generate(PROMPTS[:3], sampling=s).tokens
  assert a == b
  assert all(0 <= t < 512 for row in a for t in row)


def test_rejects_bad_prompt_before_any_work(hf_gqa_dir):
  gen = _gen(hf_gqa_dir, GenerateMode.SPLIT, TransferMode.AUTO)
  with pytest.raises(PromptError, match="context limit"):
    gen.generate([[1, 2], list(range(120))])
