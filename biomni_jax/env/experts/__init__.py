"""Scripted experts for the embedded task families: they solve instances through the real protocol and
tools (think, execute tool code, read the observation, answer), with seeded stochastic mistakes."""

from biomni_jax.env.experts.agent import RandomCandidateAgent, ScriptedExpert, make_expert
from biomni_jax.env.experts.executor import InProcessExecutor
from biomni_jax.env.experts.solvers import ANSWER_MARKER, RESULT_MARKER, SOLVERS

__all__ = [
    "ANSWER_MARKER",
    "InProcessExecutor",
    "RESULT_MARKER",
    "RandomCandidateAgent",
    "SOLVERS",
    "ScriptedExpert",
    "make_expert",
]
