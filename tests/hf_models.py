"""Tiny random Hugging Face Llama checkpoints built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

GQA_UNTIED = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
MHA_TIED_ROPE3 = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0,
                                        original_max_position_embeddings=64))


def build_random_llama(spec: dict, seed: int = 0):
  """A LlamaForCausalLM with every weight (norms included) randomised."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(seed)
  model = LlamaForCausalLM(LlamaConfig(**spec, torch_dtype="float32")).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.05 * torch.randn_like(p))
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def save_random_llama(path: Path, spec: dict, seed: int = 0) -> Path:
  model = build_random_llama(spec, seed)
  model.save_pretrained(str(path), safe_serialization=True)
  return Path(path)


def load_hf(path: Path):
  import torch
  from transformers import LlamaForCausalLM
  model = LlamaForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def hf_greedy(model, prompt: list[int], n_new: int) -> list[int]:
  """transformers' greedy ``generate``: exactly ``n_new`` new tokens."""
  import torch
  ids = torch.tensor([prompt])
  with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                         min_new_tokens=n_new, do_sample=False)
  return out[0, len(prompt):].tolist()


def hf_logits(model, tokens: list[list[int]]):
  import numpy as np
  import torch
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy().astype(np.float32)
