"""The embedded tokenizer: Qwen3-style added tokens, round trips, determinism, AutoTokenizer loading."""

import filecmp

import pytest
from transformers import AutoTokenizer

from biomni_jax.data.tokenizer import (
    QWEN3_ADDED_TOKENS,
    default_corpus,
    load_tokenizer,
    train_embedded_tokenizer,
)


def test_added_tokens_follow_the_bpe_vocabulary_in_qwen3_order(tokenizer):
  ids = [tokenizer.convert_tokens_to_ids(content) for content, _ in QWEN3_ADDED_TOKENS]
  first = ids[0]
  assert ids == list(range(first, first + len(QWEN3_ADDED_TOKENS)))
  assert len(tokenizer) == first + len(QWEN3_ADDED_TOKENS) <= 1024
  assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == first
  assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == first + 2
  assert tokenizer.bos_token is None


def test_control_and_think_tokens_are_single_tokens_inside_text(tokenizer):
  text = "<|im_start|>assistant\n<think>\nBRCA1?</think><solution>x</solution><|im_end|>"
  ids = tokenizer.encode(text, add_special_tokens=False)
  pieces = [tokenizer.decode([i]) for i in ids]
  for token in ("<|im_start|>", "<think>", "</think>", "<|im_end|>"):
    assert pieces.count(token) == 1
  # <think> is an ordinary added token (kept by skip_special_tokens), like Qwen3.
  assert tokenizer.decode(ids, skip_special_tokens=True) == (
      "assistant\n<think>\nBRCA1?</think><solution>x</solution>"
  )


@pytest.mark.parametrize(
    "text",
    [
        "plain words",
        "  leading spaces\n\n\ttabs",
        "ünïcödé 中文 αβγ 🧬",
        "rs123456789 p=5e-8",
        "def f(x):\n    return x ** 2\n",
        "",
    ],
)
def test_any_text_round_trips(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_digits_are_split_one_by_one_like_qwen(tokenizer):
  ids = tokenizer.encode("2024", add_special_tokens=False)
  assert [tokenizer.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_training_is_deterministic(tmp_path, tokenizer_dir):
  train_embedded_tokenizer(default_corpus(), vocab_size=1024, out_dir=tmp_path)
  assert filecmp.cmp(tmp_path / "tokenizer.json", tokenizer_dir / "tokenizer.json", shallow=False)


def test_directory_loads_with_autotokenizer_and_renders_the_chat_template(tokenizer_dir):
  tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
  messages = [
      {"role": "system", "content": "S"},
      {"role": "user", "content": "Q"},
      {"role": "assistant", "content": "<think>\nr\n</think>\n<solution>A</solution>"},
  ]
  text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
  assert text == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
      "<|im_start|>assistant\n<think>\nr\n</think>\n<solution>A</solution><|im_end|>\n"
  )
  prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
  assert prompt.endswith("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_vocab_size_below_the_byte_alphabet_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="vocab_size must be >= 282"):
    train_embedded_tokenizer(default_corpus(), vocab_size=100, out_dir=tmp_path)


def test_load_tokenizer_rejects_a_tokenizer_without_qwen_control_tokens(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate("abc<>|_")}, merges=[]))
  raw.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
  PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match="expected '<\\|endoftext\\|>' to be one token"):
    load_tokenizer(tmp_path)


def test_a_qwen3_style_directory_loads_as_qwen2tokenizer_with_identical_ids(tmp_path, tokenizer):
  # Real Qwen3 directories declare tokenizer_class Qwen2Tokenizer; emulate one with our vocabulary.
  import json
  import shutil

  from biomni_jax.data.chat import render

  shutil.copytree(tokenizer.name_or_path, tmp_path, dirs_exist_ok=True)
  config_path = tmp_path / "tokenizer_config.json"
  config = json.loads(config_path.read_text())
  config["tokenizer_class"] = "Qwen2Tokenizer"
  config.pop("backend", None)
  config_path.write_text(json.dumps(config))
  qwen = load_tokenizer(tmp_path)
  assert type(qwen).__name__ == "Qwen2Tokenizer"
  messages = [
      {"role": "user", "content": "rs2024 in  BRCA1?\n\n"},
      {"role": "assistant", "content": "<think>\nyes\n</think>\n<solution>rs2024</solution>"},
  ]
  for got, want in zip(render(messages, qwen), render(messages, tokenizer)):
    assert got.tolist() == want.tolist()
