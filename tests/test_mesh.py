"""Meshes, disjointness and the logical sharding rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from splitjax import mesh as mesh_lib
from splitjax.config import ConfigError, MeshConfig
from splitjax.model.llama import init_model
from splitjax.model.params import split_model
from splitjax.model.presets import get_preset


def test_eight_devices_and_disjoint_meshes():
  assert len(jax.devices()) == 8
  a = mesh_lib.make_mesh(MeshConfig(dp=1, tp=2, first_device=0))
  b = mesh_lib.make_mesh(MeshConfig(dp=2, tp=2, first_device=4))
  assert a.shape == {"dp": 1, "tp": 2} and b.shape == {"dp": 2, "tp": 2}
  mesh_lib.check_disjoint(a, b)
  c = mesh_lib.make_mesh(MeshConfig(tp=2, first_device=1))
  with pytest.raises(ConfigError, match="device 1"):
    mesh_lib.check_disjoint(a, c)


def test_mesh_beyond_devices():
  with pytest.raises(ConfigError, match="only 8 exist"):
    mesh_lib.make_mesh(MeshConfig(tp=4, first_device=6))


def test_tp_must_divide_kv_heads():
  m = mesh_lib.make_mesh(MeshConfig(tp=8))
  with pytest.raises(ConfigError, match="num_kv_heads"):
    mesh_lib.check_model_fits(get_preset("small"), m)


def test_param_specs_follow_rules():
  defs, params = split_model(init_model(get_preset("tiny", num_layers=1, vocab_size=1000)))
  m = mesh_lib.make_mesh(MeshConfig(tp=2))
  sh = mesh_lib.param_shardings(defs, params, m)
  specs = {s.spec for s in jax.tree.leaves(sh.layers[0])}
  assert P("tp", None) in specs and P(None, "tp") in specs  # column- and row-parallel
  assert sh.embed[0].spec == P("tp", None)                   # vocab-sharded table
  assert mesh_lib.logical_spec(("vocab", "embed"), (1001, 8), m) == P(None, None)  # not divisible
