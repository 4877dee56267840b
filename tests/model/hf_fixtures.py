"""Tiny random Qwen3 checkpoints built with transformers (float32), for parity tests."""

from __future__ import annotations

import torch
import transformers


def tiny_hf_config(*, tie: bool = False, yarn: bool = False, layers: int = 2, vocab: int = 256):
  rope = {"rope_type": "default", "rope_theta": 10_000.0}
  max_pos = 512
  if yarn:
    rope = {
        "rope_type": "yarn",
        "rope_theta": 10_000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    max_pos = 256
  return transformers.Qwen3Config(
      vocab_size=vocab,
      hidden_size=64,
      intermediate_size=96,
      num_hidden_layers=layers,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=32,
      max_position_embeddings=max_pos,
      rms_norm_eps=1e-6,
      tie_word_embeddings=tie,
      rope_parameters=rope,
      attention_dropout=0.0,
  )


def build_tiny_hf_model(seed: int = 0, **kwargs):
  torch.manual_seed(seed)
  model = transformers.Qwen3ForCausalLM(tiny_hf_config(**kwargs)).float().eval()
  with (
      torch.no_grad()
  ):  # HF initializes norms to exactly 1; perturb them so parity covers their weights
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
