"""orbax save -> restore gives a model with identical logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from splitjax.model import checkpoint
from splitjax.model.hf_import import CheckpointError, load_hf_llama


def test_save_restore_identical_logits(hf_gqa_dir, tmp_path):
  model = load_hf_llama(hf_gqa_dir)
  checkpoint.save(model, tmp_path / "ckpt")
  back = checkpoint.restore(tmp_path / "ckpt")
  assert back.cfg == model.cfg
  tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
  np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(back(tokens)))


def test_restore_rejects_non_checkpoint(tmp_path):
  with pytest.raises(CheckpointError, match="not a splitjax checkpoint"):
    checkpoint.restore(tmp_path)


def test_save_refuses_to_overwrite(hf_tied_dir, tmp_path):
  model = load_hf_llama(hf_tied_dir)
  checkpoint.save(model, tmp_path / "c")
  with pytest.raises(CheckpointError, match="already holds"):
    checkpoint.save(model, tmp_path / "c")
