"""The asynchronous rollout pool: token-level episodes, groups of G, staleness-bounded admission."""

from biomni_jax.rollout.admission import AdmissionControl
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.episode import EpisodeAborted, run_token_episode
from biomni_jax.rollout.pool import RolloutError, RolloutPool
from biomni_jax.rollout.types import Group, TokenTrajectory

__all__ = [
    "AdmissionControl",
    "RolloutConfig",
    "EpisodeAborted",
    "run_token_episode",
    "RolloutError",
    "RolloutPool",
    "Group",
    "TokenTrajectory",
]
