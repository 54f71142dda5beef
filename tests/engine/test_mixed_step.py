"""Engine.mixed_step: decode steps fused with chunked prefill equal the unfused path."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from splitjax import mesh as mesh_lib
from splitjax.config import EngineConfig, MeshConfig, SamplingConfig
from splitjax.engine.engine import ChunkSpec, Engine, PromptError
from splitjax.model.hf_import import load_hf_llama
from splitjax.model.params import split_model

ECFG = EngineConfig(prefill_buckets=(16, 32, 64), attention_chunk=16, decode_slots=4,
                    max_cache_len=96, layer_group_size=2)
MESHES = {"tp2": MeshConfig(tp=2, first_device=0), "dp2": MeshConfig(dp=2, tp=1, first_device=4)}


@pytest.fixture(scope="module")
def gqa(hf_gqa_dir):
  model = load_hf_llama(hf_gqa_dir)
  defs, params = split_model(model)
  return model, defs, params


@pytest.fixture(scope="module")
def engines(gqa):
  """One engine (with placed params) per mesh, shared so programs compile once."""
  _, defs, params = gqa
  out = {}
  for name, cfg in MESHES.items():
    e = Engine(defs, ECFG, mesh_lib.make_mesh(cfg))
    out[name] = (e, e.place_params(params))
  return out


@pytest.fixture(scope="module")
def full_logits(gqa):
  """Sequences -> full-forward logits per position, as one jitted padded batch."""
  fwd = nnx.jit(lambda m, t: m(t, chunk=16))

  def run(seqs: list[list[int]]) -> list[np.ndarray]:
    tokens = np.zeros((8, 64), np.int32)   # right padding leaves earlier positions exact
    for i, seq in enumerate(seqs):
      tokens[i, :len(seq)] = seq
    out = np.asarray(fwd(gqa[0], jnp.asarray(tokens)))
    return [out[i, :len(seq)] for i, seq in enumerate(seqs)]
  return run


class Driver:
  """Steps one engine and records every request's generated tokens by slot."""

  def __init__(self, engine_and_params):
    self.e, self.p = engine_and_params
    self.state = self.e.init_decode_state()
    self.key = jax.random.key(0)
    self.live: dict[str, int] = {}   # request -> slot
    self.gen: dict[str, list[int]] = {}

  def insert(self, prompts: dict[str, list[int]], slots: dict[str, int]):
    prefix = self.e.prefill(self.p, self.e.make_batch(list(prompts.values())), self.key)
    first = np.asarray(prefix.first_token_B)
    for row, r in enumerate(prompts):
      self.state = self.e.insert(prefix, self.state, row, slots[r])
      self.live[r], self.gen[r] = slots[r], [int(first[row])]

  def _record(self, toks):
    for r, s in self.live.items():
      self.gen[r].append(int(toks[s]))

  def decode(self, n: int = 1):
    for _ in range(n):
      self.state, toks = self.e.decode(self.p, self.state, self.key)
      self._record(np.asarray(toks))

  def mixed(self, chunks: dict[str, ChunkSpec], batch_size=None):
    batch = self.e.make_chunks(list(chunks.values()), batch_size)
    self.state, toks, first = self.e.mixed_step(self.p, self.state, batch, self.key)
    self._record(np.asarray(toks))
    for i, (r, spec) in enumerate(chunks.items()):
      if spec.last:
        self.live[r], self.gen[r] = spec.slot, [int(np.asarray(first)[i])]
    return batch

  def release(self, r: str):
    self.state = self.e.release(self.state, self.live.pop(r))


def _chunk(prompt, slot, lo, hi, sampling=None):
  return ChunkSpec(slot, prompt[lo:hi], lo, hi == len(prompt), sampling)


def _check_tokens(full_logits, prompts, gen):
  """Every generated token is the full forward's argmax."""
  fulls = full_logits([prompts[r] + g for r, g in gen.items()])
  for (r, g), full in zip(gen.items(), fulls):
    n = len(prompts[r])
    assert g == [int(t) for t in np.argmax(full[n - 1:n - 1 + len(g)], axis=-1)], r


def _check_kv(d: Driver, prompts: dict[str, list[int]], requests):
  """The cached prompt KV of chunk-filled slots equals a one-shot prefill's."""
  for r in requests:
    n, s = len(prompts[r]), d.live[r]
    pre = d.e.prefill(d.p, d.e.make_batch([prompts[r]]), d.key).kv[0]
    for layer in range(d.e.model.num_layers):
      np.testing.assert_allclose(np.asarray(d.state.k[layer])[s, :, :, :n],
                                 np.asarray(pre.k_LBKTH[layer, 0, :, :n]).transpose(0, 2, 1),
                                 atol=1e-5)
      np.testing.assert_allclose(np.asarray(d.state.v[layer])[s, :, :n],
                                 np.asarray(pre.v_LBKTH[layer, 0, :, :n]), atol=1e-5)


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_chunks_while_decoding_match_full_forward(engines, full_logits, mesh):
  """Prompts chunked 1+10+12, whole (9), 16+5 into slots while others decode."""
  d = Driver(engines[mesh])
  e = d.e
  prompts = dict(a=list(range(20, 45)), b=[9, 8, 7], c=list(range(100, 123)),
                 d=list(range(50, 59)), e=list(range(200, 221)))
  d.insert(dict(a=prompts["a"], b=prompts["b"]), dict(a=0, b=2))
  d.decode()
  c, pe = prompts["c"], prompts["e"]
  mixed = functools.partial(d.mixed, batch_size=2)   # one (P, C) = (2, 16) program
  mixed(dict(c=_chunk(c, 1, 0, 1), d=_chunk(prompts["d"], 3, 0, 9)))  # 1-token + whole prompt
  d.decode()                     # slot 1 (inactive) writes garbage where the next chunk starts
  mixed(dict(c=_chunk(c, 1, 1, 11)))
  mixed(dict(c=_chunk(c, 1, 11, 23)))
  d.decode(2)
  d.release("a")                 # slot 0 keeps a's stale KV and length
  mixed(dict(e=_chunk(pe, 0, 0, 16)))
  mixed(dict(e=_chunk(pe, 0, 16, 21)))
  d.decode(2)
  assert sorted(d.live.items()) == [("b", 2), ("c", 1), ("d", 3), ("e", 0)]
  _check_kv(d, prompts, ["c", "d", "e"])
  d.state, toks, logits = e.decode_with_logits(d.p, d.state, d.key)
  fulls = full_logits([prompts[r] + d.gen[r] for r in d.live])
  for (r, s), full in zip(d.live.items(), fulls):
    np.testing.assert_allclose(np.asarray(logits)[s], full[-1], atol=1e-4)
  _check_tokens(full_logits, prompts, d.gen)
  assert [len(d.gen[r]) for r in "bcde"] == [12, 7, 10, 3]
  # (+1 for the decode_with_logits step, whose tokens are not recorded)
  assert np.asarray(d.state.lengths_B).tolist() == [21 + 3, 23 + 7, 3 + 12, 9 + 10]


def test_pure_chunked_prefill(engines, full_logits):
  """No slot decodes: three prompts filled in two steps (P=4 with a padding row)."""
  d = Driver(engines["tp2"])
  e = d.e
  prompts = dict(x=list(range(1, 41)), y=[7, 3], z=list(range(300, 317)))
  top1 = SamplingConfig(temperature=1.0, top_k=1)  # stochastic path, argmax outcome
  b1 = d.mixed(dict(x=_chunk(prompts["x"], 2, 0, 30), y=_chunk(prompts["y"], 0, 0, 1),
                    z=_chunk(prompts["z"], 3, 0, 8)))
  assert b1.shape == (4, 32) and b1.num_real == 3 and b1.lengths_P.tolist() == [30, 1, 8, 0]
  assert not np.asarray(d.state.active_B).any()
  assert np.asarray(d.state.lengths_B).tolist() == [1, 0, 30, 8]
  d.mixed(dict(x=_chunk(prompts["x"], 2, 30, 40), y=_chunk(prompts["y"], 0, 1, 2, top1),
               z=_chunk(prompts["z"], 3, 8, 17)))
  assert np.asarray(d.state.active_B).tolist() == [True, False, True, True]
  assert np.asarray(d.state.sampling.temperature_B).tolist() == [1.0, 0.0, 0.0, 0.0]
  assert np.asarray(d.state.sampling.top_k_B).tolist() == [1, 0, 0, 0]
  d.decode(3)
  _check_kv(d, prompts, ["x", "y", "z"])
  _check_tokens(full_logits, prompts, d.gen)
  assert {(4, 16), (4, 32)} <= {k[1:] for k in e._programs if k[0].value == "mixed"}


def _copy(state):
  return jax.tree.map(jnp.copy, state)


def test_padding_rows_and_inactive_slots_leave_other_caches_alone(engines):
  """A padding row aimed at a stale slot writes nothing; chunk padding tokens
  write nothing; active slots match a plain decode step. A batch of only
  padding rows is a plain decode step."""
  d = Driver(engines["dp2"])
  e = d.e
  d.insert(dict(a=list(range(10, 30)), s=list(range(40, 52))), dict(a=0, s=1))
  d.release("s")                                             # slot 1: stale, inactive
  w = list(range(60, 80))
  d.mixed(dict(w=_chunk(w, 2, 0, 6)))                        # slot 2: mid-fill
  batch = e.make_chunks([_chunk(w, 2, 6, 13)])
  pad = lambda a, v: np.concatenate([a, np.full((1, *a.shape[1:]), v, a.dtype)])
  batch = dataclasses.replace(batch, tokens_PC=pad(batch.tokens_PC, 5),
                              slots_P=pad(batch.slots_P, 1), starts_P=pad(batch.starts_P, 0),
                              lengths_P=pad(batch.lengths_P, 0), last_P=pad(batch.last_P, True),
                              sampling=jax.tree.map(lambda a: pad(a, 0), batch.sampling))
  before = jax.tree.map(np.asarray, d.state)
  ref, ref_toks = e.decode(d.p, _copy(d.state), d.key)
  after, toks, _ = e.mixed_step(d.p, d.state, batch, d.key)
  pos = before.lengths_B.tolist()
  assert pos == [21, 12, 6, 0]
  assert np.asarray(toks)[0] == np.asarray(ref_toks)[0]
  assert np.asarray(after.lengths_B).tolist() == [22, 12, 13, 0]
  assert np.asarray(after.active_B).tolist() == [True, False, False, False]
  for layer in range(e.model.num_layers):
    for cache, ref_c, old, t_axis in ((after.k, ref.k, before.k, 3), (after.v, ref.v, before.v, 2)):
      new, old, ref_c = (np.moveaxis(np.asarray(a[layer]), t_axis, -1)
                         for a in (cache, old, ref_c))   # [B, K, H, S]
      np.testing.assert_allclose(new[0], ref_c[0], atol=1e-5)  # the active slot: decode
      for s in (0, 1, 3):   # all but the decode write position (garbage for inactive rows)
        keep = np.arange(new.shape[-1]) != pos[s]
        np.testing.assert_array_equal(new[s][..., keep], old[s][..., keep])
      keep = np.arange(new.shape[-1]) >= 13   # slot 2: only [6, 13) written, padding dropped
      keep[:6] = True
      np.testing.assert_array_equal(new[2][..., keep], old[2][..., keep])
      assert not np.allclose(new[2][..., 6:13], old[2][..., 6:13])
  # only padding rows: the same as decode
  ref2, ref_toks2 = e.decode(d.p, _copy(after), d.key)
  only_pad = dataclasses.replace(batch, lengths_P=np.zeros(2, np.int32), num_real=0)
  got, toks2, _ = e.mixed_step(d.p, after, only_pad, d.key)
  assert np.asarray(toks2)[0] == np.asarray(ref_toks2)[0]
  assert np.asarray(got.lengths_B).tolist() == np.asarray(ref2.lengths_B).tolist()
  for a, b in zip(got.k + got.v, ref2.k + ref2.v):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_make_chunks_errors_name_the_problem(engines):
  e, _ = engines["tp2"]
  cases = [
      ([], "no chunks given"),
      ([ChunkSpec(0, [], 0, True)], "chunk 0: empty chunk"),
      ([ChunkSpec(0, [1], 0, False), ChunkSpec(1, [3, 512], 0, True)],
       r"chunk 1: token id 512 is out of vocabulary \[0, 512\)"),
      ([ChunkSpec(0, [-1], 0, True)], "token id -1 is out of vocabulary"),
      ([ChunkSpec(0, list(range(10)), 90, True)],
       r"chunk 0: positions \[90, 100\) exceed the cache length of 96"),
      ([ChunkSpec(4, [1], 0, True)], r"slot 4 is not a decode slot \[0, 4\)"),
      ([ChunkSpec(0, list(range(65)), 0, False)], "65 tokens exceed the largest prefill bucket"),
      ([ChunkSpec(2, [1], 0, False), ChunkSpec(2, [2], 1, True)], "two chunks for slot 2"),
      ([ChunkSpec(0, [1.5], 0, True)], "must be integers"),
  ]
  for specs, msg in cases:
    with pytest.raises(PromptError, match=msg):
      e.make_chunks(specs)


def test_chunk_attention_equals_naive_softmax():
  """Several query/cache tiles, a last cache tile clamped at S (40 % 16 != 0),
  a chunk with no cached prefix and one with a 35-position prefix."""
  from splitjax.model.attention import chunk_attention
  rng = np.random.default_rng(0)
  b, k, g, h, s, c = 3, 2, 2, 8, 40, 5
  f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  kT, v, q, kc, vc = f(b, k, h, s), f(b, k, s, h), f(2, k, g, c, h), f(2, k, c, h), f(2, k, c, h)
  slots, starts = np.array([2, 0], np.int32), np.array([0, 35], np.int32)
  attend = jax.jit(chunk_attention, static_argnums=7)
  got = np.asarray(attend(q, kc, vc, kT, v, slots, starts, 2))
  for p in range(2):
    n = starts[p]
    keys = np.concatenate([kT[slots[p]][:, :, :n].transpose(0, 2, 1), kc[p]], axis=1)  # [K, n+C, H]
    vals = np.concatenate([v[slots[p]][:, :n], vc[p]], axis=1)
    sc = np.einsum("kgqh,ksh->kgqs", q[p], keys) / np.sqrt(h)
    sc = np.where(np.arange(n + c)[None, :] <= n + np.arange(c)[:, None], sc, -np.inf)
    w = np.exp(sc - sc.max(-1, keepdims=True))
    want = np.einsum("kgqs,ksh->kgqh", w / w.sum(-1, keepdims=True), vals)
    np.testing.assert_allclose(got[p], want, atol=1e-5)
  got16 = np.asarray(attend(q, kc, vc, kT, v, slots, starts, 16))
  np.testing.assert_allclose(got16, got, atol=1e-5)
