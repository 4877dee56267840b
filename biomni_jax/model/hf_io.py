"""Hugging Face Qwen3 checkpoints <-> biomni_jax params, exact in both directions.

One table (`_KEY_MAP`) pairs each HF tensor name with our param path and the reshape between them; it is
used for loading and for saving. HF stores Linear weights as [out, in]; we store kernels as [in, ...out]
with heads split out (q_proj: HF [H*D, E] <-> ours [E, H, D]). Per-layer HF tensors are stacked along a
leading `layers` axis (our layers are scanned).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax.model.api import abstract_params
from biomni_jax.model.config import ModelConfig
from biomni_jax.model.safetensors_io import SafetensorsFile, save_file
from biomni_jax.sharding import ShardingRules

_LAYER = "model.layers.{i}."


@dataclasses.dataclass(frozen=True)
class _Entry:
  hf: str  # HF name; "{i}" marks a per-layer tensor
  ours: tuple[str, ...]  # path in params
  to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
  to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _same(w, c):
  return w


def _t(w, c):
  return w.T


def _heads_in(n_heads: Callable[[ModelConfig], int]):  # HF [N*D, E] -> ours [E, N, D]
  return lambda w, c: w.T.reshape(c.hidden_size, n_heads(c), c.head_dim)


def _heads_out(w, c):  # ours [E, N, D] -> HF [N*D, E]
  return w.reshape(w.shape[0], -1).T


def _o_in(w, c):  # HF o_proj [E, H*D] -> ours [H, D, E]
  return w.T.reshape(c.num_attention_heads, c.head_dim, c.hidden_size)


def _o_out(w, c):  # ours [H, D, E] -> HF [E, H*D]
  return w.reshape(-1, w.shape[-1]).T


def _vocab_in(
    w, c
):  # HF [V, E] -> ours [Vp, E]: zero rows for the padded ids (their logits are masked)
  if w.shape[0] != c.vocab_size:
    raise ValueError(
        f"expected {c.vocab_size} vocabulary rows (config vocab_size), found {w.shape[0]}"
    )
  return np.pad(w, ((0, c.padded_vocab_size - c.vocab_size), (0, 0)))


def _vocab_out(w, c):  # ours [Vp, E] -> HF [V, E]
  return w[: c.vocab_size]


def _lm_head_in(w, c):  # HF [V, E] -> ours [E, Vp]
  return _vocab_in(w, c).T


def _lm_head_out(w, c):  # ours [E, Vp] -> HF [V, E]
  return _vocab_out(w.T, c)


_Q_HEADS = _heads_in(lambda c: c.num_attention_heads)
_KV_HEADS = _heads_in(lambda c: c.num_key_value_heads)


def _layer_entry(module: str, leaf: str, to_ours, to_hf) -> _Entry:
  """A decoder layer's tensor: HF `model.layers.{i}.<module>.weight` <-> ours ("layers", *module, leaf)."""
  return _Entry(f"{_LAYER}{module}.weight", ("layers", *module.split("."), leaf), to_ours, to_hf)


_KEY_MAP: tuple[_Entry, ...] = (
    _Entry("model.embed_tokens.weight", ("embed_tokens", "embedding"), _vocab_in, _vocab_out),
    _layer_entry("input_layernorm", "scale", _same, _same),
    _layer_entry("self_attn.q_proj", "kernel", _Q_HEADS, _heads_out),
    _layer_entry("self_attn.k_proj", "kernel", _KV_HEADS, _heads_out),
    _layer_entry("self_attn.v_proj", "kernel", _KV_HEADS, _heads_out),
    _layer_entry("self_attn.o_proj", "kernel", _o_in, _o_out),
    _layer_entry("self_attn.q_norm", "scale", _same, _same),
    _layer_entry("self_attn.k_norm", "scale", _same, _same),
    _layer_entry("post_attention_layernorm", "scale", _same, _same),
    _layer_entry("mlp.gate_proj", "kernel", _t, _t),
    _layer_entry("mlp.up_proj", "kernel", _t, _t),
    _layer_entry("mlp.down_proj", "kernel", _t, _t),
    _Entry("model.norm.weight", ("norm", "scale"), _same, _same),
    _Entry("lm_head.weight", ("lm_head",), _lm_head_in, _lm_head_out),
)


class CheckpointError(ValueError):
  """A checkpoint directory that does not hold a loadable Qwen3."""


# --------------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> ModelConfig:
  """Parses a Qwen3 config.json dict; rejects what this model does not implement, naming the field."""
  arch = hf.get("architectures") or []
  if hf.get("model_type") != "qwen3" and "Qwen3ForCausalLM" not in arch:
    raise CheckpointError(
        f"{source}: unsupported architecture: model_type={hf.get('model_type')!r}, "
        f"architectures={arch}; expected model_type 'qwen3' (Qwen3ForCausalLM)"
    )
  for field, ok in (("attention_bias", False), ("use_sliding_window", False)):
    if hf.get(field, ok) != ok:
      raise CheckpointError(
          f"{source}: field {field}={hf[field]!r} is not supported (expected {ok!r})"
      )
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(
        f"{source}: field hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')"
    )
  required = (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
  )
  missing = [k for k in required if k not in hf]
  if missing:
    raise CheckpointError(f"{source}: missing required field(s) {missing}")
  rope = dict(hf.get("rope_parameters") or {})
  rope.update(hf.get("rope_scaling") or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "yarn"):
    raise CheckpointError(
        f"{source}: field rope_type={rope_type!r} is not supported (expected 'default' or 'yarn')"
    )
  heads = hf["num_attention_heads"]
  kwargs = dict(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"],
      num_hidden_layers=hf["num_hidden_layers"],
      num_attention_heads=heads,
      num_key_value_heads=hf.get("num_key_value_heads", heads),
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10_000.0)),
      max_position_embeddings=hf.get("max_position_embeddings", 40_960),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
  )
  if rope_type == "yarn":
    kwargs.update(
        rope_scaling_factor=rope.get("factor"),
        rope_original_max_position_embeddings=rope.get("original_max_position_embeddings")
        or kwargs["max_position_embeddings"],
        rope_beta_fast=rope.get("beta_fast") or 32.0,
        rope_beta_slow=rope.get("beta_slow") or 1.0,
        rope_attention_factor=rope.get("attention_factor"),
        rope_truncate=rope.get("truncate", True),
    )
    if kwargs["rope_scaling_factor"] is None:
      kwargs["rope_scaling_factor"] = (
          kwargs["max_position_embeddings"] / kwargs["rope_original_max_position_embeddings"]
      )
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def config_to_hf(config: ModelConfig) -> dict:
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling_factor is not None:
    rope.update(
        rope_type="yarn",
        factor=config.rope_scaling_factor,
        original_max_position_embeddings=config.rope_original_max_position_embeddings,
        beta_fast=config.rope_beta_fast,
        beta_slow=config.rope_beta_slow,
        truncate=config.rope_truncate,
    )
    if config.rope_attention_factor is not None:
      rope["attention_factor"] = config.rope_attention_factor
  return {
      "architectures": ["Qwen3ForCausalLM"],
      "model_type": "qwen3",
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads,
      "num_key_value_heads": config.num_key_value_heads,
      "head_dim": config.head_dim,
      "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta,
      "rope_parameters": rope,
      "max_position_embeddings": config.max_position_embeddings,
      "tie_word_embeddings": config.tie_word_embeddings,
      "hidden_act": "silu",
      "attention_bias": False,
      "attention_dropout": 0.0,
      "use_sliding_window": False,
      "torch_dtype": "float32",
      "dtype": "float32",
      "bos_token_id": None,
      "eos_token_id": None,
  }


# --------------------------------------------------------------------------------------------- loading


def _open_tensors(path: str) -> dict[str, SafetensorsFile]:
  """Maps every tensor name to the file that holds it (single file or sharded with an index)."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = {
        name: SafetensorsFile(os.path.join(path, name)) for name in sorted(set(weight_map.values()))
    }
    return {tensor: files[fname] for tensor, fname in weight_map.items()}
  single = os.path.join(path, "model.safetensors")
  if not os.path.exists(single):
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json found")
  f = SafetensorsFile(single)
  return {name: f for name in f.keys()}


def _get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set_path(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_hf_checkpoint(
    path: str, dtype=jnp.float32, sharding: ShardingRules | None = None, **config_overrides
) -> tuple[ModelConfig, dict]:
  """Reads config.json and (sharded) safetensors into (ModelConfig, params).

  With `sharding`, each parameter is created directly in its target sharding: every device's shard is cut
  from the memory-mapped file, one layer at a time, so no host holds the whole model.
  """
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise CheckpointError(
        f"{path}: no config.json (expected a Hugging Face Qwen3 checkpoint directory)"
    )
  with open(cfg_path) as f:
    config = config_from_hf(json.load(f), source=cfg_path, **config_overrides)
  tensors = _open_tensors(path)
  expected = abstract_params(config, sharding)
  params: dict = {}
  for entry in _KEY_MAP:
    if entry.ours == ("lm_head",) and config.tie_word_embeddings:
      continue
    target = _get_path(expected, entry.ours)
    per_layer = "{i}" in entry.hf
    names = (
        [entry.hf.format(i=i) for i in range(config.num_hidden_layers)] if per_layer else [entry.hf]
    )
    for name in names:
      if name not in tensors:
        raise CheckpointError(
            f"{path}: tensor {name!r} is missing (needed for params/{'/'.join(entry.ours)})"
        )
    want = target.shape[1:] if per_layer else target.shape

    def layer(i, entry=entry, names=names, want=want):
      raw = tensors[names[i]].get(names[i])
      try:
        w = entry.to_ours(raw, config)
      except ValueError as e:
        raise CheckpointError(
            f"{path}: tensor {names[i]!r} has shape {raw.shape}, incompatible with "
            f"params/{'/'.join(entry.ours)} of shape {want}: {e}"
        ) from None
      if w.shape != tuple(want):
        raise CheckpointError(
            f"{path}: tensor {names[i]!r} has shape {raw.shape}; expected a tensor giving "
            f"params/{'/'.join(entry.ours)} shape {tuple(want)}"
        )
      return w

    # HF holds the real vocabulary's rows only (ours: padded_vocab_size).
    hf_size = math.prod(want)
    if entry.to_ours in (_vocab_in, _lm_head_in):
      hf_size = hf_size // config.padded_vocab_size * config.vocab_size
    for i in range(len(names)):  # validate every shape up front, before any device work
      hf_shape = tensors[names[i]].shape(names[i])
      if math.prod(hf_shape) != hf_size:
        raise CheckpointError(
            f"{path}: tensor {names[i]!r} has shape {hf_shape}; expected "
            f"{hf_size} elements for params/{'/'.join(entry.ours)} {tuple(want)}"
        )

    def shard(index, per_layer=per_layer, layer=layer, n=len(names)):
      if not per_layer:
        return np.asarray(layer(0)[index], dtype=dtype)
      rows = range(n)[index[0]]
      return np.stack([np.asarray(layer(i)[index[1:]], dtype=dtype) for i in rows])

    shape = tuple(target.shape)
    if sharding is None:
      full = tuple(slice(None) for _ in shape)
      value = jnp.asarray(shard(full))
    else:
      value = jax.make_array_from_callback(shape, target.sharding, shard)
    _set_path(params, entry.ours, value)
  return config, params


# --------------------------------------------------------------------------------------------- saving


def save_hf_checkpoint(
    config: ModelConfig, params, path: str, *, dtype=np.float32, max_shard_bytes: int = 4 << 30
) -> None:
  """Writes config.json + safetensors (sharded above `max_shard_bytes`) loadable by
  `transformers.AutoModelForCausalLM.from_pretrained`. Written to a temporary sibling directory and renamed
  into place, so `path` is either complete or untouched. Only process 0 writes on multi-host runs.
  """
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)  # gathers sharded arrays
  if jax.process_index() != 0:
    return
  out: dict[str, np.ndarray] = {}
  for entry in _KEY_MAP:
    if entry.ours == ("lm_head",) and config.tie_word_embeddings:
      continue
    w = _get_path(host, entry.ours)
    if "{i}" in entry.hf:
      for i in range(config.num_hidden_layers):
        out[entry.hf.format(i=i)] = np.ascontiguousarray(entry.to_hf(w[i], config)).astype(dtype)
    else:
      out[entry.hf] = np.ascontiguousarray(entry.to_hf(w, config)).astype(dtype)

  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp_hf_", dir=parent)
  try:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in out.items():
      if shards[-1] and size + arr.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = arr
      size += arr.nbytes
    if len(shards) == 1:
      save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
      weight_map = {}
      for k, shard_tensors in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard_tensors, os.path.join(tmp, fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard_tensors})
      total = sum(a.nbytes for a in out.values())
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = config_to_hf(config)
    hf_config["torch_dtype"] = hf_config["dtype"] = np.dtype(dtype).name
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    if os.path.exists(path):
      backup = path.rstrip("/") + ".old"
      shutil.rmtree(backup, ignore_errors=True)
      os.rename(path, backup)
      os.rename(tmp, path)
      shutil.rmtree(backup, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
