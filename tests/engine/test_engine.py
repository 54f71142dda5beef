"""Engine programs: prefill + N decode steps equal one full forward pass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from splitjax import mesh as mesh_lib
from splitjax import transfer
from splitjax.config import EngineConfig, MeshConfig, TransferMode
from splitjax.engine.engine import Engine, PromptError
from splitjax.engine.types import KVLayoutError
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.llama import init_model
from splitjax.model.params import split_model
from splitjax.model.presets import get_preset

ECFG = EngineConfig(prefill_buckets=(16, 32, 64), attention_chunk=16, decode_slots=4,
                    max_cache_len=96, layer_group_size=2)


@pytest.fixture(scope="module")
def gqa(hf_gqa_dir):
  model = load_hf_llama(hf_gqa_dir)
  defs, params = split_model(model)
  return model, defs, params


def _engines(defs, split: bool):
  a = Engine(defs, ECFG, mesh_lib.make_mesh(MeshConfig(tp=2, first_device=0)))
  if not split:
    return a, a
  return a, Engine(defs, ECFG, mesh_lib.make_mesh(MeshConfig(dp=2, tp=1, first_device=4)))


def _check_against_full_forward(model, prompt, generated, step_logits, atol=1e-4):
  """Greedy tokens and every step's logits equal the full forward's."""
  seq = list(prompt) + list(generated)
  full = np.asarray(model(jnp.array([seq]), chunk=16))[0]
  n = len(prompt)
  for i, logits in enumerate(step_logits):
    np.testing.assert_allclose(logits, full[n - 1 + i], atol=atol)
    assert generated[i] == int(np.argmax(full[n - 1 + i]))


@pytest.mark.parametrize("split,layerwise", [(False, False), (True, False), (True, True)])
def test_prefill_then_decode_equals_full_forward(gqa, split, layerwise):
  model, defs, params = gqa
  pe, de = _engines(defs, split)
  pp, dp = pe.place_params(params), de.place_params(params)
  prompts = [[5], list(range(3, 10)), list(range(100, 116)), list(range(7, 36))]
  batch = pe.make_batch(prompts)
  key = jax.random.key(0)
  prefix = pe.prefill(pp, batch, key, layerwise=layerwise)
  if split:
    prefix = transfer.to_engine(prefix, de)
  state = de.init_decode_state()
  slots = [2, 0, 3, 1]  # rows land in shuffled slots
  for row, slot in enumerate(slots):
    state = de.insert(prefix, state, row, slot)
  first = np.asarray(prefix.first_token_B)
  gen = {r: [int(first[r])] for r in range(4)}
  logs = {r: [] for r in range(4)}
  for _ in range(6):
    state, toks, logits = de.decode_with_logits(dp, state, key)
    toks, logits = np.asarray(toks), np.asarray(logits)
    for r, s in enumerate(slots):
      gen[r].append(int(toks[s]))
      logs[r].append(logits[s])
  for r, p in enumerate(prompts):
    # the first token came from prefill; check it through the full forward as well
    full = np.asarray(model(jnp.array([p + gen[r]]), chunk=16))[0]
    assert gen[r][0] == int(np.argmax(full[len(p) - 1]))
    _check_against_full_forward(model, p + gen[r][:1], gen[r][1:], logs[r])


def test_insert_while_others_decode(gqa):
  """Continuous batching: a request joins mid-flight; both stay exact."""
  model, defs, params = gqa
  pe, de = _engines(defs, split=True)
  pp, dp = pe.place_params(params), de.place_params(params)
  key = jax.random.key(1)
  state = de.init_decode_state()
  a_prompt, b_prompt = list(range(20, 45)), [9, 8, 7]
  pa = transfer.to_engine(pe.prefill(pp, pe.make_batch([a_prompt]), key), de)
  state = de.insert(pa, state, 0, 1)
  gen = {1: [int(np.asarray(pa.first_token_B)[0])]}
  logs = {1: []}

  def steps(state, n):
    for _ in range(n):
      state, t, l = de.decode_with_logits(dp, state, key)
      for slot in gen:
        gen[slot].append(int(t[slot]))
        logs[slot].append(np.asarray(l[slot]))
    return state

  state = steps(state, 3)
  pb = transfer.to_engine(pe.prefill(pp, pe.make_batch([b_prompt]), key, layerwise=True), de)
  state = de.insert(pb, state, 0, 3)
  gen[3], logs[3] = [int(np.asarray(pb.first_token_B)[0])], []
  state = steps(state, 4)
  a_gen, a_log, b_gen, b_log = gen[1], logs[1], gen[3], logs[3]
  _check_against_full_forward(model, a_prompt + a_gen[:1], a_gen[1:], a_log)
  _check_against_full_forward(model, b_prompt + b_gen[:1], b_gen[1:], b_log)
  assert np.asarray(state.lengths_B).tolist() == [0, 25 + 7, 0, 3 + 4]


def test_layerwise_prefill_matches_single_program(gqa):
  _, defs, params = gqa
  pe, _ = _engines(defs, split=False)
  pp = pe.place_params(params)
  batch = pe.make_batch([list(range(1, 30)), [4, 5]])
  one = pe.prefill(pp, batch, jax.random.key(0))
  many = pe.prefill(pp, batch, jax.random.key(0), layerwise=True)
  assert len(one.kv) == 1 and len(many.kv) == 2  # 3 layers, groups of 2
  k_many = np.concatenate([np.asarray(g.k_LBKTH) for g in many.kv])
  np.testing.assert_allclose(k_many, np.asarray(one.kv[0].k_LBKTH), atol=1e-5)
  assert np.asarray(one.first_token_B).tolist() == np.asarray(many.first_token_B).tolist()


def test_release_stops_a_slot(gqa):
  _, defs, params = gqa
  e, _ = _engines(defs, split=False)
  p = e.place_params(params)
  state = e.insert(e.prefill(p, e.make_batch([[1, 2, 3]]), jax.random.key(0)),
                   e.init_decode_state(), 0, 0)
  state, _ = e.decode(p, state, jax.random.key(0))
  state = e.release(state, 0)
  state, _ = e.decode(p, state, jax.random.key(0))
  assert np.asarray(state.lengths_B)[0] == 4 and not bool(np.asarray(state.active_B)[0])


def test_prompt_errors_name_the_problem(gqa):
  _, defs, _ = gqa
  e, _ = _engines(defs, split=False)
  with pytest.raises(PromptError, match="empty prompt"):
    e.make_batch([[]])
  with pytest.raises(PromptError, match="out of vocabulary"):
    e.make_batch([[1, 512]])
  with pytest.raises(PromptError, match="out of vocabulary"):
    e.make_batch([[-1]])
  with pytest.raises(PromptError, match="exceeds the largest prefill bucket"):
    e.make_batch([list(range(65))])
  with pytest.raises(PromptError, match="context limit of 96"):
    e.validate_prompt(list(range(60)), max_new_tokens=40)


def test_transfer_rejects_wrong_layout(gqa):
  _, defs, params = gqa
  pe, de = _engines(defs, split=True)
  prefix = pe.prefill(pe.place_params(params), pe.make_batch([[1, 2, 3]]), jax.random.key(0))
  # a model with another KV shape
  other_defs, _ = split_model(init_model(get_preset("tiny", num_layers=3, vocab_size=512)))
  other = Engine(other_defs, ECFG, mesh_lib.make_mesh(MeshConfig(first_device=6)))
  with pytest.raises(KVLayoutError, match="K=8"):
    transfer.to_engine(prefix, other)
  # same shape, but not in the canonical sharding
  rep = NamedSharding(pe.mesh, P())
  g = prefix.kv[0]
  bad = dataclasses.replace(prefix, kv=(type(g)(jax.device_put(g.k_LBKTH, rep),
                                                jax.device_put(g.v_LBKTH, rep)),))
  with pytest.raises(KVLayoutError, match="canonical"):
    transfer.to_engine(bad, de)
  # wrong dtype
  bf = dataclasses.replace(prefix, kv=(type(g)(g.k_LBKTH.astype(jnp.bfloat16),
                                               g.v_LBKTH.astype(jnp.bfloat16)),))
  with pytest.raises(KVLayoutError, match="dtype"):
    transfer.to_engine(bf, de)


def test_transferred_kv_equals_sent(gqa):
  _, defs, params = gqa
  pe, de = _engines(defs, split=True)
  batch = pe.make_batch([list(range(1, 40))])
  for mode in (TransferMode.SERIALIZED, TransferMode.LAYERWISE):
    sent = pe.prefill(pe.place_params(params), batch, jax.random.key(0),
                      layerwise=mode == TransferMode.LAYERWISE)
    got = transfer.to_engine(sent, de)
    for s, g in zip(sent.kv, got.kv):
      assert g.k_LBKTH.sharding.mesh == de.mesh
      np.testing.assert_array_equal(np.asarray(s.k_LBKTH), np.asarray(g.k_LBKTH))
      np.testing.assert_array_equal(np.asarray(s.v_LBKTH), np.asarray(g.v_LBKTH))
