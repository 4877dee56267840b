"""Shared fixtures for tests of biomni_jax.data: one embedded tokenizer per session."""

import pytest

from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("embedded_tokenizer")
  train_embedded_tokenizer(default_corpus(), vocab_size=1024, out_dir=out)
  return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
  from biomni_jax.data.tokenizer import load_tokenizer

  return load_tokenizer(tokenizer_dir)
