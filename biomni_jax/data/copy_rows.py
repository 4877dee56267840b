"""Synthetic copy rows: random tokens with a repeated segment, the loss only on the copy.

They teach a small base model in-context copying (an induction head: find where the current token
occurred before and emit what followed it), the skill an agent needs to put the id its tool printed
into its solution. One example of T tokens with a segment of k tokens (k uniform in [k_min, k_max]):

    index      0             1 .. T-2k-1    T-2k .. T-k-1    T-k    T-k+1 .. T-1
    token      <|endoftext|> filler         s_1 .. s_k       s_1    s_2 .. s_k
    loss_mask  0             0              0                0      1 .. 1

filler and s are drawn uniformly (with replacement) from `token_ids`, the tokenizer's ordinary
vocabulary (no added tokens). loss_mask marks the tokens to learn, as data/packing.py expects: the
copy after its first token, k - 1 tokens. Each is predictable from the context only by copying (the
token after the previous token's earlier occurrence); the copy's first token is not (nothing marks
where s ends), so it is not learned. The copy distance is k, so a range of k teaches a range of
distances. Copy accuracy = the fraction of loss_mask tokens the model's argmax predicts (teacher
forced); chance is 1 / len(token_ids).

`documents.example_trajectory` wraps an example as a token-level Trajectory (ids and loss mask kept
verbatim, as train/sft.py trains RL trajectories), so the SFT loop trains on copy rows, documents and
their mixtures unchanged (train/base_model.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from biomni_jax.data.documents import END_OF_TEXT


def ordinary_token_ids(tokenizer) -> np.ndarray:
  """The ids of the tokenizer's trained vocabulary: every id below len(tokenizer) that is not an
  added token (`<|im_start|>`, `<think>`, ...). int32 [N]."""
  added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
  ids = np.asarray([i for i in range(len(tokenizer)) if i not in added], np.int32)
  if ids.size < 2:
    raise ValueError(f"ordinary_token_ids: the tokenizer has {ids.size} ordinary tokens; need >= 2")
  return ids


def copy_example(
    rng: np.random.Generator,
    length: int,
    token_ids: np.ndarray,
    start_id: int,
    segment: tuple[int, int],
) -> dict[str, np.ndarray]:
  """One example (see the module docstring): {"tokens", "loss_mask"}, int32 [length] each."""
  k_min, k_max = segment
  if not 2 <= k_min <= k_max or 2 * k_max + 1 > length:
    raise ValueError(
        f"copy_example: segment lengths {segment} must satisfy 2 <= k_min <= k_max and "
        f"2 * k_max + 1 <= length ({length})"
    )
  k = int(rng.integers(k_min, k_max + 1))
  tokens = np.asarray(token_ids, np.int32)[rng.integers(0, len(token_ids), length)]
  tokens[0] = start_id
  tokens[length - k :] = tokens[length - 2 * k : length - k]
  loss_mask = np.zeros(length, np.int32)
  loss_mask[length - k + 1 :] = 1
  return {"tokens": tokens, "loss_mask": loss_mask}


def default_segment(length: int) -> tuple[int, int]:
  """Segments of a quarter to a half of the example (T = 33: 8-16 tokens), so the copy distance
  spans [T / 4, T / 2]."""
  return max(2, (length - 1) // 4), (length - 1) // 2


def copy_examples(
    seed: int,
    count: int,
    length: int,
    token_ids: np.ndarray,
    start_id: int,
    segment: tuple[int, int] | None = None,
) -> list[dict[str, np.ndarray]]:
  """`count` examples of `length` tokens from the random stream `seed` (fresh rows per seed)."""
  rng = np.random.default_rng(seed)
  segment = segment or default_segment(length)
  return [copy_example(rng, length, token_ids, start_id, segment) for _ in range(count)]


def start_token_id(tokenizer) -> int:
  """The id every example starts with: `<|endoftext|>`, the separator documents end with."""
  eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
  if eos is None or eos == tokenizer.unk_token_id:
    raise ValueError(f"copy rows: the tokenizer has no {END_OF_TEXT} token")
  return int(eos)


def copy_accuracy(model_config, params, examples: Sequence[dict], batch_size: int = 8) -> float:
  """Teacher-forced greedy accuracy on the loss_mask tokens of equal-length examples (fraction)."""
  import jax.numpy as jnp

  from biomni_jax.model import api

  hits, total = 0, 0
  for start in range(0, len(examples), batch_size):
    chunk = examples[start : start + batch_size]
    tokens = np.stack([e["tokens"] for e in chunk])
    mask = np.stack([e["loss_mask"] for e in chunk])
    logits = api.forward(model_config, params, jnp.asarray(tokens))
    pred = np.asarray(jnp.argmax(logits[:, :-1], -1))
    hits += int(((pred == tokens[:, 1:]) * mask[:, 1:]).sum())
    total += int(mask[:, 1:].sum())
  return hits / max(total, 1)
