"""Qwen3 in Flax linen, used pure-functionally. See `api.py` for the functional surface."""

from biomni_jax.model.api import (
    abstract_params,
    cache_logical_axes,
    default_positions,
    forward,
    forward_with_cache,
    hidden_states,
    init_cache,
    init_params,
    num_params,
    param_logical_axes,
    param_shardings,
)
from biomni_jax.model.config import PRESETS, ModelConfig, get_preset
from biomni_jax.model.logprobs import token_logprobs
from biomni_jax.model.qwen3 import lm_head_weight, project_logits

__all__ = [
    "ModelConfig",
    "PRESETS",
    "get_preset",
    "forward",
    "forward_with_cache",
    "hidden_states",
    "init_params",
    "init_cache",
    "cache_logical_axes",
    "abstract_params",
    "param_logical_axes",
    "param_shardings",
    "token_logprobs",
    "lm_head_weight",
    "project_logits",
    "default_positions",
    "num_params",
]
