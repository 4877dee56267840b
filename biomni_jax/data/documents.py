"""Plain-text documents for language-model pretraining (loss on every token), as jsonl and as examples.

A document file is jsonl, one {"text": non-empty str} per line (other keys are kept but unused). As
examples for packing, a document is its token ids followed by `<|endoftext|>` with a loss mask of
ones: next-token prediction on the whole text, the objective of the base model that SFT starts from.

`environment_documents` builds the embedded pretraining corpus from teacher trajectories: each
trajectory's task prompt and tool outputs (user turns), never an assistant turn, so a model pretrained
on it reads the domain's text (ids, tables, sequences) without ever having seen the agent protocol.

`example_trajectory` wraps any token-level example (a document's, a synthetic copy row's) as a
Trajectory whose ids and loss mask the SFT loop trains verbatim, so one data file can mix them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from biomni_jax.data.trajectory import Trajectory, jsonl_rows

END_OF_TEXT = "<|endoftext|>"


def read_documents(path: str) -> list[str]:
  """The texts of a jsonl document file; a bad line raises ValueError naming the file and line."""
  texts = []
  for where, row in jsonl_rows(path):
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
      raise ValueError(
          f"{where}: expected an object with a non-empty string field 'text', found "
          f"{str(row)[:80]!r}"
      )
    texts.append(row["text"])
  if not texts:
    raise ValueError(f"{path}: no documents")
  return texts


def write_documents(path: str, texts: Iterable[str]) -> int:
  """Write texts as jsonl atomically (a temporary file renamed into place). Returns the count."""
  tmp = f"{path}.tmp"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({"text": text}) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def environment_documents(trajectories: Sequence[Trajectory]) -> list[str]:
  """One document per trajectory: its user turns (task prompt, observations) joined by blank lines."""
  docs = []
  for t in trajectories:
    parts = [m["content"] for m in t.messages if m["role"] == "user"]
    if parts:
      docs.append("\n\n".join(parts))
  return docs


def document_examples(texts: Sequence[str], tokenizer) -> list[dict]:
  """Packing examples: {"tokens": ids + [<|endoftext|>], "loss_mask": all ones}."""
  eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
  if eos is None or eos == tokenizer.unk_token_id:
    raise ValueError(f"document_examples: the tokenizer has no {END_OF_TEXT} token")
  out = []
  for text in texts:
    ids = list(tokenizer.encode(text, add_special_tokens=False)) + [eos]
    out.append({"tokens": ids, "loss_mask": [1] * len(ids)})
  return out


def example_trajectory(example: dict, tokenizer, kind: str) -> Trajectory:
  """A token-level Trajectory of {"tokens", "loss_mask"}: token_ids and loss_mask are the example's;
  the messages only make the file readable: the tokens before the first learned one as the user
  turn (omitted when there are none), the rest as the assistant turn. task = {"task_name": kind}."""
  tokens = np.asarray(example["tokens"], np.int32)
  mask = np.asarray(example["loss_mask"], np.int32)
  if tokens.ndim != 1 or tokens.shape != mask.shape or not mask.any():
    raise ValueError(
        f"example_trajectory({kind}): expected tokens and loss_mask of one equal 1-D shape with a "
        f"learned token, found shapes {tokens.shape}, {mask.shape} and {int(mask.sum())} learned"
    )
  first = int(np.argmax(mask))
  if first > 0:  # the copy rows: the token before the first learned one starts the copy
    first -= 1
  messages = [{"role": "user", "content": tokenizer.decode(tokens[:first]) or " "}] if first else []
  messages.append({"role": "assistant", "content": tokenizer.decode(tokens[first:]) or " "})
  return Trajectory(
      messages=messages,
      task={"task_name": kind},
      reward=0.0,
      token_ids=tokens,
      loss_mask=mask,
  )
