"""Inference: KV cache, jitted prefill/decode, the continuous-batching engine with multi-turn sessions."""

from biomni_jax.sampling.aio import AsyncEngine
from biomni_jax.sampling.engine import Engine, Session
from biomni_jax.sampling.layout import SamplerLayout
from biomni_jax.sampling.params import FINISH_REASONS, Completion, SamplingParams
from biomni_jax.sampling.replicas import EngineGroup, make_engine, publish_to

__all__ = [
    "Engine",
    "EngineGroup",
    "Session",
    "AsyncEngine",
    "SamplerLayout",
    "SamplingParams",
    "Completion",
    "FINISH_REASONS",
    "make_engine",
    "publish_to",
]
