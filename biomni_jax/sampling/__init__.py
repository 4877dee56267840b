"""Inference: KV cache, jitted prefill/decode, the continuous-batching engine with multi-turn sessions."""

from biomni_jax.sampling.aio import AsyncEngine
from biomni_jax.sampling.engine import Engine, Session
from biomni_jax.sampling.params import FINISH_REASONS, Completion, SamplingParams

__all__ = ["Engine", "Session", "AsyncEngine", "SamplingParams", "Completion", "FINISH_REASONS"]
