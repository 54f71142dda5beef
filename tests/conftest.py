"""Test setup: 8 virtual CPU devices (before JAX starts) and tiny HF checkpoints."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

from tests import hf_models  # noqa: E402


@pytest.fixture(scope="session")
def hf_gqa_dir(tmp_path_factory):
  """Random Llama, GQA (4 heads / 2 KV heads), untied embeddings, saved as safetensors."""
  return hf_models.save_random_llama(tmp_path_factory.mktemp("hf_gqa"), hf_models.GQA_UNTIED)


@pytest.fixture(scope="session")
def hf_tied_dir(tmp_path_factory):
  """Random Llama, MHA, tied embeddings, Llama-3 rope scaling, saved as safetensors."""
  return hf_models.save_random_llama(tmp_path_factory.mktemp("hf_tied"), hf_models.MHA_TIED_ROPE3)
