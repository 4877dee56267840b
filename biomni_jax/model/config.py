"""Qwen3 architecture hyperparameters and the published presets.

`ModelConfig` is a frozen dataclass (hashable, so it can be a static argument of `jax.jit`). It holds the
architecture only; where tensors live on a mesh is decided by `biomni_jax.sharding`, never here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Qwen3 hyperparameters (names follow transformers' Qwen3Config where one exists)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  max_position_embeddings: int = 40_960
  tie_word_embeddings: bool = False
  # YaRN context extension (transformers' rope_type="yarn"); None = plain RoPE.
  rope_scaling_factor: float | None = None
  rope_original_max_position_embeddings: int | None = None
  rope_beta_fast: float = 32.0
  rope_beta_slow: float = 1.0
  rope_attention_factor: float | None = None
  rope_truncate: bool = True
  # Numerics and memory.
  dtype: str = "float32"  # compute dtype of activations and matmuls; params stay float32
  remat_policy: str = "full"  # one of REMAT_POLICIES; applied to each scanned decoder layer
  scan_layers: bool = True
  attention_impl: str = "auto"  # "auto" | "blockwise" | "reference" | "splash"
  attention_block_q: int = 512
  attention_block_kv: int = 512
  logits_chunk: int = 1024  # tokens per chunk when computing log-probs / cross-entropy
  # The embedding and LM head hold `padded_vocab_size` rows, so that they shard over any mesh axis whose
  # size divides the multiple; the padded ids' logits are masked (never sampled, no probability mass).
  vocab_multiple: int = 128

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}"
      )
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.vocab_size < 1 or self.vocab_multiple < 1:
      raise ValueError(
          f"vocab_size={self.vocab_size} and vocab_multiple={self.vocab_multiple} must be >= 1"
      )
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype={self.dtype!r}; expected 'float32' or 'bfloat16'")

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def num_groups(self) -> int:
    return self.num_attention_heads // self.num_key_value_heads

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def with_yarn(self, factor: float, original_max_position_embeddings: int) -> "ModelConfig":
    """YaRN as Qwen3 documents it: e.g. factor 2 over 32,768 native positions gives 65,536."""
    return self.replace(
        rope_scaling_factor=float(factor),
        rope_original_max_position_embeddings=int(original_max_position_embeddings),
        max_position_embeddings=int(factor * original_max_position_embeddings),
    )

  def layer_matmul_params(self) -> int:
    """Weights of one decoder layer's matmuls: the q, k, v and o projections (E x H D, 2 x E x K D,
    H D x E) and the SwiGLU MLP's gate, up and down (3 x E x M)."""
    e, m, h, k, d = (
        self.hidden_size,
        self.intermediate_size,
        self.num_attention_heads,
        self.num_key_value_heads,
        self.head_dim,
    )
    return e * h * d + 2 * e * k * d + h * d * e + 3 * e * m

  def num_params(self) -> int:
    e = self.hidden_size
    # Besides the matmuls, a layer holds the q/k RMSNorm scales (D each) and its two RMSNorms (E each).
    layer = self.layer_matmul_params() + 2 * self.head_dim + 2 * e
    head = 0 if self.tie_word_embeddings else self.vocab_size * e
    return self.vocab_size * e + self.num_hidden_layers * layer + e + head

  def flops_per_token(self, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per matmul weight (layers + LM head) plus causal attention.

    Attention: QK^T and PV cost 2 * 2 * H * D FLOPs per (query, key) pair; a causal query sees on average
    seq_len / 2 keys.
    """
    h, d = self.num_attention_heads, self.head_dim
    dense = 2.0 * (
        self.num_hidden_layers * self.layer_matmul_params() + self.vocab_size * self.hidden_size
    )
    attn = 2.0 * 2.0 * self.num_hidden_layers * h * d * seq_len / 2
    return dense + attn


# One preset a row. The Qwen3 rows are the published hyperparameters (the Hugging Face config.json of each
# release); "bench_100m" (~112M parameters) is the benchmark size, "tiny" the tests' (small attention and
# logits blocks, below). All use rms_norm_eps 1e-6.
_PRESET_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
)
# fmt: off
_PRESET_ROWS = {
    #              vocab    hidden  inter   layers  heads  kv  head_dim  rope_theta  max_pos  tied
    "tiny":       (512,     64,     128,    2,      4,     2,  16,       10_000.0,   4096,    False),
    "bench_100m": (32_768,  768,    3072,   10,     12,    4,  64,       1e6,        40_960,  True),
    "qwen3_0_6b": (151_936, 1024,   3072,   28,     16,    8,  128,      1e6,        40_960,  True),
    "qwen3_8b":   (151_936, 4096,   12_288, 36,     32,    8,  128,      1e6,        40_960,  False),
    "qwen3_32b":  (151_936, 5120,   25_600, 64,     64,    8,  128,      1e6,        40_960,  False),
}
# fmt: on
PRESETS: dict[str, ModelConfig] = {
    name: ModelConfig(**dict(zip(_PRESET_FIELDS, row))) for name, row in _PRESET_ROWS.items()
}
PRESETS["tiny"] = PRESETS["tiny"].replace(
    attention_block_q=64, attention_block_kv=64, logits_chunk=128
)


def get_preset(name: str, **overrides: Any) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)
