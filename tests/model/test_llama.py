"""Our Llama against transformers' LlamaForCausalLM on the same random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from splitjax.config import DType
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.llama import init_model
from splitjax.model.presets import get_preset
from tests import hf_models


@pytest.mark.parametrize("fixture", ["hf_gqa_dir", "hf_tied_dir"])
def test_logits_match_transformers(fixture, request):
  path = request.getfixturevalue(fixture)
  ours = load_hf_llama(path)
  theirs = hf_models.load_hf(path)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, ours.cfg.vocab_size, size=(2, 77)).tolist()
  want = hf_models.hf_logits(theirs, tokens)
  # chunk 16 exercises the multi-chunk causal path
  got = np.asarray(ours(jnp.array(tokens), chunk=16))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_gqa_and_tied_shapes_imported(hf_gqa_dir, hf_tied_dir):
  gqa = load_hf_llama(hf_gqa_dir).cfg
  tied = load_hf_llama(hf_tied_dir).cfg
  assert (gqa.num_heads, gqa.num_kv_heads, gqa.tie_embeddings) == (4, 2, False)
  assert (tied.num_kv_heads, tied.tie_embeddings, tied.rope_scaling_factor) == (4, True, 8.0)


def test_chunked_prefill_equals_single_chunk():
  model = init_model(get_preset("tiny", num_layers=2, vocab_size=300), seed=1)
  tokens = jnp.array(np.random.default_rng(1).integers(0, 300, size=(3, 40)))
  a = model(tokens, chunk=512)
  b = model(tokens, chunk=7)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_bfloat16_model_runs_and_tracks_float32():
  m32 = init_model(get_preset("tiny", num_layers=2, vocab_size=300), seed=3)
  m16 = init_model(get_preset("tiny", num_layers=2, vocab_size=300, dtype=DType.BFLOAT16))
  nnx.update(m16, jax.tree.map(lambda a: a.astype(jnp.bfloat16), nnx.state(m32)))
  tokens = jnp.array([np.arange(1, 33)])
  l32, l16 = m32(tokens), m16(tokens)
  assert l16.dtype == jnp.float32  # logits are always float32
  assert m16.layers[0].q_proj.weight[...].dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(l32)))
  assert float(jnp.max(jnp.abs(l32 - l16))) < 0.05 * scale
  assert float(jnp.mean(jnp.argmax(l32, -1) == jnp.argmax(l16, -1))) > 0.8


def test_presets_shapes():
  small = get_preset("small")
  assert 120e6 < small.param_count() < 130e6
  l70 = get_preset("llama2-70b")
  # GQA: 8 KV heads x 128 dims x 80 layers x K and V x 2 bytes
  assert l70.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
  assert 68e9 < l70.param_count() < 70e9
  assert 6.5e9 < get_preset("llama2-7b").param_count() < 6.8e9
  assert 7.9e9 < get_preset("llama3-8b").param_count() < 8.1e9
