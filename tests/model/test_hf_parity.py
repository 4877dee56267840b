"""Our Qwen3 equals transformers' Qwen3 on the same random weights, in both directions of conversion."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from biomni_jax import model as M
from biomni_jax.model import hf_io
from tests.model.hf_fixtures import build_tiny_hf_model, hf_logits

ATOL = 1e-4


def _tokens(vocab, shape=(2, 48), seed=0):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("tie,yarn", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_matches_transformers(tmp_path, tie, yarn):
  hf_model = build_tiny_hf_model(tie=tie, yarn=yarn)
  hf_model.save_pretrained(tmp_path)
  config, params = hf_io.load_hf_checkpoint(str(tmp_path))
  assert config.tie_word_embeddings == tie
  assert (config.rope_scaling_factor is not None) == yarn
  tokens = _tokens(
      config.vocab_size, (2, 200 if yarn else 48)
  )  # YaRN: beyond the original 64 positions
  ours = np.asarray(M.forward(config, params, jnp.asarray(tokens)))
  theirs = hf_logits(hf_model, tokens)
  np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_blockwise_and_reference_kernels_agree_on_model(tmp_path):
  hf_model = build_tiny_hf_model()
  hf_model.save_pretrained(tmp_path)
  config, params = hf_io.load_hf_checkpoint(
      str(tmp_path), attention_block_q=16, attention_block_kv=16
  )
  tokens = jnp.asarray(_tokens(config.vocab_size, (2, 45)))
  blockwise = M.forward(config.replace(attention_impl="blockwise"), params, tokens)
  reference = M.forward(config.replace(attention_impl="reference"), params, tokens)
  np.testing.assert_allclose(np.asarray(blockwise), np.asarray(reference), atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_save_then_transformers_loads_same_logits(tmp_path, tie):
  hf_model = build_tiny_hf_model(tie=tie, yarn=True, seed=3)
  hf_model.save_pretrained(tmp_path / "src")
  config, params = hf_io.load_hf_checkpoint(str(tmp_path / "src"))
  hf_io.save_hf_checkpoint(
      config, params, str(tmp_path / "out"), max_shard_bytes=200_000
  )  # forces sharding
  assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", dtype=torch.float32
  ).eval()
  tokens = _tokens(config.vocab_size, (1, 100))
  np.testing.assert_allclose(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens), atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(M.forward(config, params, jnp.asarray(tokens))),
      hf_logits(reloaded, tokens),
      atol=ATOL,
  )
  config2, params2 = hf_io.load_hf_checkpoint(
      str(tmp_path / "out")
  )  # and our own loader reads it back
  assert config2 == config


def test_packed_segments_equal_separate_sequences(tmp_path):
  hf_model = build_tiny_hf_model(seed=1)
  hf_model.save_pretrained(tmp_path)
  config, params = hf_io.load_hf_checkpoint(
      str(tmp_path), attention_block_q=16, attention_block_kv=16
  )
  a, b = _tokens(config.vocab_size, (1, 20), 1), _tokens(config.vocab_size, (1, 27), 2)
  packed = np.concatenate([a, b], axis=1)
  segments = np.array([[1] * 20 + [2] * 27], np.int32)
  out = np.asarray(
      M.forward(config, params, jnp.asarray(packed), segment_ids=jnp.asarray(segments))
  )
  np.testing.assert_allclose(out[:, :20], hf_logits(hf_model, a), atol=ATOL)
  np.testing.assert_allclose(out[:, 20:], hf_logits(hf_model, b), atol=ATOL)


# ---------------------------------------------------------------------------------------------- bad input


def _saved(tmp_path, **kwargs):
  build_tiny_hf_model(**kwargs).save_pretrained(tmp_path)
  return tmp_path


def _rewrite_tensors(path, edit):
  from biomni_jax.model.safetensors_io import SafetensorsFile, save_file

  f = SafetensorsFile(str(path / "model.safetensors"))
  tensors = {k: np.array(f.get(k)) for k in f.keys()}
  edit(tensors)
  save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(tmp_path):
  path = _saved(tmp_path)
  _rewrite_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(
      hf_io.CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"
  ):
    hf_io.load_hf_checkpoint(str(path))


def test_wrong_shape_is_named(tmp_path):
  path = _saved(tmp_path)

  def shrink(t):
    t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]

  _rewrite_tensors(path, shrink)
  with pytest.raises(
      hf_io.CheckpointError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*shape"
  ):
    hf_io.load_hf_checkpoint(str(path))


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("model_type", "llama", "unsupported architecture"),
        ("attention_bias", True, "attention_bias"),
        ("hidden_act", "gelu", "hidden_act"),
    ],
)
def test_unsupported_config_field_is_named(tmp_path, field, value, match):
  path = _saved(tmp_path)
  cfg = json.loads((path / "config.json").read_text())
  cfg[field] = value
  if field == "model_type":
    cfg["architectures"] = ["LlamaForCausalLM"]
  (path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf_io.CheckpointError, match=match):
    hf_io.load_hf_checkpoint(str(path))


def test_not_a_checkpoint_directory(tmp_path):
  with pytest.raises(hf_io.CheckpointError, match="config.json"):
    hf_io.load_hf_checkpoint(str(tmp_path))


def test_load_straight_into_a_sharding(tmp_path):
  import subprocess
  import sys
  from tests.model.test_sharding import _env, _result

  build_tiny_hf_model(seed=5).save_pretrained(tmp_path)
  script = os.path.join(os.path.dirname(__file__), "sharded_load_check.py")
  proc = subprocess.run(
      [sys.executable, script, str(tmp_path)],
      env=_env(8),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _result(proc.stdout)
  assert r["max_diff"] == 0.0 and r["placed"] and r["n_sharded"] > 0, r
  assert r["logits_diff"] < 1e-4, r


@pytest.mark.parametrize("tie", [False, True])
def test_padded_vocabulary_changes_no_logit_logprob_or_exported_weight(tmp_path, tie):
  """A vocabulary of 201 ids is held as 256 rows (vocab_multiple 128): logits over the real ids equal
  transformers', log-probs and entropies over the padded rows equal those over the real vocabulary,
  and an export gives transformers back the 201-row tensors."""
  hf_model = build_tiny_hf_model(tie=tie, vocab=201, seed=5)
  hf_model.save_pretrained(tmp_path / "src")
  config, params = hf_io.load_hf_checkpoint(str(tmp_path / "src"))
  assert (config.vocab_size, config.padded_vocab_size) == (201, 256)
  assert params["embed_tokens"]["embedding"].shape == (256, 64)
  tokens = _tokens(201, (2, 30), seed=7)
  ours = np.asarray(M.forward(config, params, jnp.asarray(tokens)))
  np.testing.assert_allclose(ours, hf_logits(hf_model, tokens), atol=ATOL, rtol=0)

  targets = np.roll(tokens, -1, axis=1)
  logp, entropy = M.token_logprobs(
      config, params, jnp.asarray(tokens), jnp.asarray(targets), temperature=0.7, with_entropy=True
  )
  z = ours.astype(np.float64) / 0.7
  log_softmax = (
      z
      - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
      - z.max(-1, keepdims=True)
  )
  want = np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(logp), want, atol=2e-5)
  want_entropy = -(np.exp(log_softmax) * log_softmax).sum(-1)
  np.testing.assert_allclose(np.asarray(entropy), want_entropy, atol=2e-5)

  hf_io.save_hf_checkpoint(config, params, str(tmp_path / "out"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "out", dtype=torch.float32
  )
  assert reloaded.get_input_embeddings().weight.shape == (201, 64)
  np.testing.assert_allclose(hf_logits(reloaded, tokens), ours, atol=ATOL, rtol=0)
