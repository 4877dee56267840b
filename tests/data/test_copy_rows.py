"""copy_rows: the layout and loss mask of synthetic copy examples, their trajectories, copy accuracy."""

import numpy as np
import pytest

from biomni_jax.data import copy_rows
from biomni_jax.data.documents import example_trajectory
from biomni_jax.data.packing import add_next_token_targets, pack_examples
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.data.trajectory import validate


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_embedded_tokenizer(default_corpus(), 400, tmp_path_factory.mktemp("tok"))


def test_layout_repeats_the_segment_and_masks_only_the_copy_after_its_first_token():
  ids = np.arange(100, 140, dtype=np.int32)
  for seed in range(20):
    rng = np.random.default_rng(seed)
    ex = copy_rows.copy_example(rng, 33, ids, start_id=7, segment=(8, 16))
    tokens, mask = ex["tokens"], ex["loss_mask"]
    assert tokens.shape == mask.shape == (33,) and tokens.dtype == mask.dtype == np.int32
    assert tokens[0] == 7 and np.isin(tokens[1:], ids).all()
    k = int(mask.sum()) + 1  # the copy's first token is not learned
    assert 8 <= k <= 16
    np.testing.assert_array_equal(tokens[33 - k :], tokens[33 - 2 * k : 33 - k])
    np.testing.assert_array_equal(mask[: 33 - k + 1], 0)
    np.testing.assert_array_equal(mask[33 - k + 1 :], 1)


def test_examples_are_deterministic_per_seed_and_fresh_across_seeds():
  ids = np.arange(50, 1050, dtype=np.int32)
  a = copy_rows.copy_examples(1, 4, 65, ids, 0)
  b = copy_rows.copy_examples(1, 4, 65, ids, 0)
  c = copy_rows.copy_examples(2, 4, 65, ids, 0)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  assert not all(np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))
  assert copy_rows.default_segment(65) == (16, 32)
  assert all(16 <= e["loss_mask"].sum() + 1 <= 32 for e in a)


def test_bad_segment_is_a_clear_error():
  with pytest.raises(ValueError, match="segment lengths"):
    copy_rows.copy_example(np.random.default_rng(0), 20, np.arange(5), 0, (4, 10))
  with pytest.raises(ValueError, match="segment lengths"):
    copy_rows.copy_example(np.random.default_rng(0), 20, np.arange(5), 0, (1, 3))


def test_packed_targets_train_exactly_the_copied_tokens():
  ids = np.arange(10, 60, dtype=np.int32)
  examples = copy_rows.copy_examples(0, 5, 17, ids, 1)
  rows = add_next_token_targets(pack_examples(examples, 64).rows)
  # Every trained target is a copy token, predicted from the position before it.
  n = sum(int(e["loss_mask"].sum()) for e in examples)
  assert rows["target_mask"].sum() == n
  r, t = np.nonzero(rows["target_mask"])
  np.testing.assert_array_equal(rows["targets"][r, t], rows["tokens"][r, t + 1])
  np.testing.assert_array_equal(rows["loss_mask"][r, t + 1], 1)


def test_ordinary_ids_exclude_added_tokens_and_trajectory_keeps_ids(tokenizer):
  ids = copy_rows.ordinary_token_ids(tokenizer)
  added = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<think>", "<|endoftext|>")}
  assert not added & set(ids.tolist()) and len(ids) == len(tokenizer) - 26
  start = copy_rows.start_token_id(tokenizer)
  assert start == tokenizer.convert_tokens_to_ids("<|endoftext|>")
  ex = copy_rows.copy_examples(3, 1, 33, ids, start)[0]
  t = validate(example_trajectory(ex, tokenizer, "copy_row"))
  np.testing.assert_array_equal(t.token_ids, ex["tokens"])
  np.testing.assert_array_equal(t.loss_mask, ex["loss_mask"])
  assert [m["role"] for m in t.messages] == ["user", "assistant"]
  k = int(ex["loss_mask"].sum()) + 1  # the assistant turn is the whole copy
  assert t.messages[1]["content"] == tokenizer.decode(ex["tokens"][-k:])


def test_copy_accuracy_equals_a_direct_argmax_count(monkeypatch):
  import jax
  import jax.numpy as jnp

  from biomni_jax.model import api
  from biomni_jax.model.config import get_preset

  cfg = get_preset("tiny", vocab_size=64, num_hidden_layers=1)
  params = api.init_params(cfg, jax.random.key(0))
  examples = copy_rows.copy_examples(0, 6, 21, np.arange(2, 64, dtype=np.int32), 1)
  tokens = np.stack([e["tokens"] for e in examples])
  mask = np.stack([e["loss_mask"] for e in examples])
  pred = np.asarray(api.forward(cfg, params, tokens).argmax(-1))
  expected = (
      sum(int(pred[b, t - 1] == tokens[b, t]) for b in range(6) for t in range(21) if mask[b, t])
      / mask.sum()
  )
  assert copy_rows.copy_accuracy(cfg, params, examples, batch_size=4) == pytest.approx(expected)

  # A model that predicts the true next token scores 1; one that repeats its input token scores the
  # fraction of copy tokens equal to the token before them.
  def oracle(config, params, x):
    nxt = jnp.concatenate([x[:, 1:], x[:, :1]], axis=1)
    return jax.nn.one_hot(nxt, config.vocab_size)

  monkeypatch.setattr(api, "forward", oracle)
  assert copy_rows.copy_accuracy(cfg, params, examples) == 1.0
  monkeypatch.setattr(api, "forward", lambda c, p, x: jax.nn.one_hot(x, c.vocab_size))
  repeats = sum(int(tokens[b, t] == tokens[b, t - 1]) for b, t in zip(*np.nonzero(mask)))
  assert copy_rows.copy_accuracy(cfg, params, examples) == pytest.approx(repeats / mask.sum())
