"""Checkpoint directory problems give errors that name the problem."""

import json
import shutil

import pytest

from splitjax.model.hf_import import CheckpointError, load_hf_llama, model_config_from_hf


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_missing_directory(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    load_hf_llama(tmp_path / "nope")


def test_missing_config(hf_gqa_dir, tmp_path):
  d = _copy(hf_gqa_dir, tmp_path / "c")
  (d / "config.json").unlink()
  with pytest.raises(CheckpointError, match="no config.json"):
    load_hf_llama(d)


def test_missing_safetensors(hf_gqa_dir, tmp_path):
  d = _copy(hf_gqa_dir, tmp_path / "c")
  for f in d.glob("*.safetensors"):
    f.unlink()
  with pytest.raises(CheckpointError, match="no \\*.safetensors"):
    load_hf_llama(d)


def test_missing_tensor_named(hf_gqa_dir, tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy(hf_gqa_dir, tmp_path / "c")
  (f,) = list(d.glob("*.safetensors"))
  tensors = load_file(str(f))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(f), metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
    load_hf_llama(d)


def test_shape_mismatch_named(hf_gqa_dir, tmp_path):
  d = _copy(hf_gqa_dir, tmp_path / "c")
  cfg = json.loads((d / "config.json").read_text())
  cfg["intermediate_size"] = 999
  (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight.*has shape .* expected"):
    load_hf_llama(d)


@pytest.mark.parametrize("patch,msg", [
    ({"model_type": "gpt2"}, "unsupported model_type"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type"),
])
def test_unsupported_configs(patch, msg):
  base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_hidden_layers=1,
              num_attention_heads=2, intermediate_size=16)
  with pytest.raises(CheckpointError, match=msg):
    model_config_from_hf({**base, **patch})


def test_config_missing_key():
  with pytest.raises(CheckpointError, match="vocab_size"):
    model_config_from_hf(dict(model_type="llama", hidden_size=8, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=16))
