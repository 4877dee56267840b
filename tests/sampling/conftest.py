"""A tiny random Qwen3 (built with transformers, loaded through hf_io) and one shared engine."""

import jax.numpy as jnp
import numpy as np
import pytest

from biomni_jax import model as M
from biomni_jax.model import hf_io
from biomni_jax.sampling import Engine
from tests.model.hf_fixtures import build_tiny_hf_model

VOCAB = 256
# Every token decodes to two letters, so a stop string usually straddles token boundaries.
PIECES = [chr(97 + i % 26) + chr(97 + (i * 7 + 3) % 26) for i in range(VOCAB)]
POISON: set = set()  # token ids whose detokenization raises (to test failure isolation)


def toy_detokenize(ids):
  if POISON.intersection(ids):
    raise RuntimeError(f"detokenize refused ids {sorted(POISON.intersection(ids))}")
  return "".join(PIECES[int(i)] for i in ids)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_qwen3")
  hf_model = build_tiny_hf_model(seed=0, vocab=VOCAB)
  hf_model.save_pretrained(path)
  config, params = hf_io.load_hf_checkpoint(str(path), attention_block_q=16, attention_block_kv=16)
  return hf_model, config, params


@pytest.fixture(scope="session")
def engine(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  eng = Engine(
      config,
      params,
      num_slots=16,
      max_len=256,
      max_prefill_chunk=64,
      min_prefill_bucket=16,
      decode_block=32,
      detokenize=toy_detokenize,
  )
  yield eng
  eng.shutdown()


def full_logits(config, params, ids):
  """Logits [T, V] of a full forward (no cache) over one sequence."""
  return np.asarray(M.forward(config, params, jnp.asarray([ids], jnp.int32)))[0]


def random_ids(n, seed):
  return [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, n)]
