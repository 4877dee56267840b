"""Pretraining documents: jsonl with line-numbered errors, the environment corpus (no assistant turns),
examples that learn every token, and SFT rows built from them."""

import json

import numpy as np
import pytest

from biomni_jax.data.documents import (
    END_OF_TEXT,
    document_examples,
    environment_documents,
    read_documents,
    write_documents,
)
from biomni_jax.data.trajectory import Trajectory


def test_write_then_read_round_trips(tmp_path):
  path = str(tmp_path / "docs.jsonl")
  assert write_documents(path, ["alpha beta", "ENSG00000163755\nrow 2"]) == 2
  assert read_documents(path) == ["alpha beta", "ENSG00000163755\nrow 2"]
  assert not (tmp_path / "docs.jsonl.tmp").exists()


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "docs.jsonl:2: invalid JSON"),
        ('{"txt": "x"}', "docs.jsonl:2: expected an object with a non-empty string field 'text'"),
        (
            '{"text": "   "}',
            "docs.jsonl:2: expected an object with a non-empty string field 'text'",
        ),
        ('["text"]', "docs.jsonl:2: expected an object"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "docs.jsonl"
  path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
  with pytest.raises(ValueError, match=message):
    read_documents(str(path))


def test_an_empty_file_is_an_error(tmp_path):
  path = tmp_path / "docs.jsonl"
  path.write_text("\n")
  with pytest.raises(ValueError, match="no documents"):
    read_documents(str(path))


def test_environment_documents_hold_prompts_and_observations_never_assistant_turns():
  t = Trajectory(
      messages=[
          {"role": "system", "content": "SYSTEM"},
          {"role": "user", "content": "Task: find X"},
          {"role": "assistant", "content": "<think>plan</think><execute>print(1)</execute>"},
          {"role": "user", "content": "<observation>1</observation>"},
          {"role": "assistant", "content": "<think>done</think><solution>X</solution>"},
      ],
      task={"task_name": "t"},
      reward=2.0,
  )
  assert environment_documents([t]) == ["Task: find X\n\n<observation>1</observation>"]


def test_document_examples_learn_every_token_and_end_with_endoftext(tokenizer):
  texts = ["Phenotypes: HP:0000001", "1 MIA3 3.72"]
  examples = document_examples(texts, tokenizer)
  eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
  for text, ex in zip(texts, examples):
    assert ex["tokens"][-1] == eos and tokenizer.decode(ex["tokens"][:-1]) == text
    assert ex["loss_mask"] == [1] * len(ex["tokens"])


def test_sft_rows_from_documents_target_every_next_token(tokenizer):
  from biomni_jax.train.sft import build_rows

  texts = ["alpha beta gamma delta", "ACGT ACGT ACGT"]
  rows = build_rows(texts, tokenizer, seq_len=64, pack=False)
  for i, ex in enumerate(document_examples(texts, tokenizer)):
    n = len(ex["tokens"])
    np.testing.assert_array_equal(rows["targets"][i, : n - 1], ex["tokens"][1:])
    assert rows["target_mask"][i].sum() == n - 1  # every token but the first is a target
