"""The SFT loop's parts: resumable batch order, metrics files, rows from trajectories, and a short real run."""

import json
import struct

import numpy as np
import pytest

from biomni_jax.config_utils import ConfigError
from biomni_jax.data.packing import count_target_tokens
from biomni_jax.data.tokenizer import load_tokenizer, train_embedded_tokenizer
from biomni_jax.data.trajectory import TrajectoryFormatError
from biomni_jax.train.data_iter import BatchIterator
from biomni_jax.train.metrics import MetricsWriter, read_jsonl_metrics
from biomni_jax.train.sft import build_rows, load_trajectories, tokenizer_corpus, train_sft
from tests.train.sft_fixtures import conversation, fast_config, write_conversations

# ------------------------------------------------------------------------------------------ batch iterator


def rows_with_ids(n, length=3):
  return {
      "tokens": np.repeat(np.arange(n)[:, None], length, axis=1),
      "other": np.arange(n)[:, None] * 10,
  }


def test_each_epoch_visits_every_full_batch_row_once_in_a_seeded_order():
  it = BatchIterator(rows_with_ids(10), 4, seed=1)
  assert it.batches_per_epoch == 2
  epoch0 = np.concatenate([next(it)["tokens"][:, 0] for _ in range(2)])
  epoch1 = np.concatenate([next(it)["tokens"][:, 0] for _ in range(2)])
  assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8 and not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(epoch0, np.random.default_rng([1, 0]).permutation(10)[:8])
  again = BatchIterator(rows_with_ids(10), 4, seed=1)
  np.testing.assert_array_equal(
      np.concatenate([next(again)["tokens"][:, 0] for _ in range(2)]), epoch0
  )
  assert it.epoch == 1 and it.position == 2
  unshuffled = BatchIterator(rows_with_ids(10), 4, shuffle=False)
  np.testing.assert_array_equal(next(unshuffled)["other"][:, 0], [0, 10, 20, 30])


def test_set_state_continues_with_the_batch_that_would_have_come_next():
  it = BatchIterator(rows_with_ids(9), 2, seed=7)
  for _ in range(5):  # into the second epoch
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it)["tokens"] for _ in range(6)]
  resumed = BatchIterator(rows_with_ids(9), 2, seed=0)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)
  with pytest.raises(ValueError, match="missing keys"):
    resumed.set_state({"epoch": 0})
  with pytest.raises(ValueError, match="position"):
    resumed.set_state({"epoch": 0, "position": 99, "seed": 0})


def test_processes_get_contiguous_shares_of_the_global_batch():
  whole = BatchIterator(rows_with_ids(12), 6, seed=3)
  parts = [
      BatchIterator(rows_with_ids(12), 6, seed=3, process_index=i, process_count=3)
      for i in range(3)
  ]
  for _ in range(4):
    np.testing.assert_array_equal(
        np.concatenate([next(p)["tokens"] for p in parts]), next(whole)["tokens"]
    )
  with pytest.raises(ValueError, match="divisible by process_count"):
    BatchIterator(rows_with_ids(12), 4, process_count=3)
  with pytest.raises(ValueError, match="cannot fill one batch"):
    BatchIterator(rows_with_ids(3), 4)


# ------------------------------------------------------------------------------------------ metrics


def read_tensorboard_scalars(directory):
  """(tag, step, value) of every scalar in TFRecord-framed event files (no TensorFlow needed)."""
  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted(directory.iterdir()):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.append((v.tag, event.step, v.simple_value))
  return out


def test_metrics_go_to_jsonl_and_tensorboard_and_resume_drops_later_steps(tmp_path):
  with MetricsWriter(tmp_path) as w:
    for step in (1, 2, 3):
      w.write(step, {"loss": np.float32(1.0 / step), "lr": 0.5, "bad": float("nan")})
  records = read_jsonl_metrics(tmp_path / "metrics.jsonl")
  assert (
      [r["step"] for r in records] == [1, 2, 3]
      and records[1]["loss"] == 0.5
      and records[0]["bad"] is None
  )
  scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
  assert ("loss", 2, 0.5) in scalars and ("lr", 3, 0.5) in scalars
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss"')  # a write torn by a crash
  with MetricsWriter(tmp_path, tensorboard=False, resume_step=2) as w:
    w.write(3, {"loss": 9.0})
  assert [(r["step"], r["loss"]) for r in read_jsonl_metrics(tmp_path / "metrics.jsonl")] == [
      (1, 1.0),
      (2, 0.5),
      (3, 9.0),
  ]
  with pytest.raises(ValueError, match="expected a scalar for 'v'"):
    MetricsWriter(tmp_path, tensorboard=False, resume_step=3).write(4, {"v": np.zeros(2)})


# ------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  out = tmp_path_factory.mktemp("tok")
  train_embedded_tokenizer(tokenizer_corpus([conversation(i) for i in range(8)]), 512, out)
  return load_tokenizer(out)


def test_rows_train_exactly_the_rendered_assistant_tokens_packed_or_not(tokenizer):
  from biomni_jax.data.chat import render

  trajectories = [conversation(i) for i in range(6)]
  examples = [
      dict(zip(("tokens", "loss_mask"), render(t.messages, tokenizer))) for t in trajectories
  ]
  packed = build_rows(trajectories, tokenizer, seq_len=512, pack=True, rows_multiple_of=2)
  padded = build_rows(trajectories, tokenizer, seq_len=512, pack=False, rows_multiple_of=2)
  expected = count_target_tokens(examples)
  assert packed["target_mask"].sum() == padded["target_mask"].sum() == expected > 0
  assert (
      packed["tokens"].shape[0] % 2 == 0 and packed["tokens"].shape[0] < padded["tokens"].shape[0]
  )
  # Row 0 of the padded layout is conversation 0: targets are its next tokens, trained where masked.
  ids, mask = examples[0]["tokens"], examples[0]["loss_mask"]
  n = len(ids)
  np.testing.assert_array_equal(padded["targets"][0, : n - 1], ids[1:])
  np.testing.assert_array_equal(padded["target_mask"][0, : n - 1], mask[1:])
  assert padded["target_mask"][0, n - 1 :].sum() == 0


def test_sampled_token_ids_are_trained_verbatim(tokenizer):
  from biomni_jax.data.trajectory import with_tokens

  t = with_tokens(conversation(0), tokenizer)
  t.token_ids = t.token_ids.copy()
  t.token_ids[5] = 7  # a sampled id that re-tokenizing the text would not give back
  rows = build_rows([t], tokenizer, seq_len=256, pack=False)
  assert rows["tokens"][0, 5] == 7


def test_bad_data_paths_and_rows_name_the_field_or_line(tmp_path):
  with pytest.raises(ConfigError, match="'data.train_path': empty"):
    load_trajectories("")
  with pytest.raises(ConfigError, match="'data.eval_path': '/nope' does not exist"):
    load_trajectories("/nope", where="data.eval_path")
  bad = tmp_path / "bad.jsonl"
  good = json.dumps(conversation(0).to_json_dict())
  bad.write_text(good + "\n" + good.replace('"assistant"', '"robot"', 1) + "\n")
  with pytest.raises(TrajectoryFormatError, match=r"bad.jsonl:2"):
    load_trajectories(str(bad))


# ------------------------------------------------------------------------------------------ the loop


def test_short_sft_run_learns_logs_evaluates_and_checkpoints(tmp_path):
  train = write_conversations(tmp_path / "train.jsonl", 16)
  held_out = write_conversations(tmp_path / "val.jsonl", 4, start=100)
  config = fast_config(
      train,
      **{
          "data.eval_path": held_out,
          "sft.num_steps": 15,
          "sft.eval_every": 15,
          "sft.save_every": 5,
          "sft.micro_batches": 2,
      },
  )
  summary = train_sft(config, str(tmp_path / "run"))
  losses = summary["losses"]
  assert sorted(losses) == list(range(1, 16))
  assert np.mean([losses[k] for k in (13, 14, 15)]) < 0.7 * np.mean([losses[k] for k in (1, 2, 3)])
  assert summary["eval_loss"] < losses[1]
  records = read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")
  assert {"loss", "lr", "grad_norm", "masked_tokens_per_s", "target_tokens"} <= set(records[0])
  assert "eval_loss" in records[-1] and records[-1]["step"] == 15
  assert sorted(
      p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()
  ) == ["10", "15"]
  assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
  assert list((tmp_path / "run" / "tensorboard").iterdir())

  # The workdir belongs to this data: a run on other trajectories refuses to resume from it.
  other = write_conversations(tmp_path / "other.jsonl", 16, start=50)
  with pytest.raises(ValueError, match="saved by a run on other data"):
    train_sft(fast_config(other, **{"sft.num_steps": 20}), str(tmp_path / "run"))


def test_config_field_errors_name_the_field(tmp_path):
  train = write_conversations(tmp_path / "train.jsonl", 8)
  with pytest.raises(ConfigError, match="'sft.micro_batches': 3 does not divide sft.batch_size=4"):
    train_sft(fast_config(train, **{"sft.micro_batches": 3}), str(tmp_path / "a"))
  config = fast_config(train).to_dict()  # a plain dict: ConfigDict itself would refuse the str
  config["sft"]["batch_size"] = "8"
  with pytest.raises(ConfigError, match="'sft.batch_size': expected int, found '8'"):
    train_sft(config, str(tmp_path / "b"))
  config = fast_config(train)
  config.model.preset = "huge"
  with pytest.raises(ConfigError, match="'model.preset'.*unknown model preset 'huge'"):
    train_sft(config, str(tmp_path / "c"))
  config = fast_config(train, **{"optimizer.warmup_steps": 50, "sft.num_steps": 10})
  with pytest.raises(ConfigError, match="total_steps"):
    train_sft(config, str(tmp_path / "d"))
