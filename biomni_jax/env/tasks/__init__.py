"""Task families: deterministic instances (prompt, answer), the official grader and the training reward.

Families register themselves by name (registry.get_family("rare_disease_diagnosis")); importing
this package registers all of them. Knowledge-based families load the knowledge base on first use.
"""

from biomni_jax.env.tasks import phenotype_families, sequence_qa  # noqa: F401  (registers the families)
from biomni_jax.env.tasks.base import (
    INPUTS_VARIABLE,
    SPLITS,
    TaskFamily,
    TaskInstance,
    inputs_note,
    sandbox_setup_code,
    split_of,
    with_inputs,
)
from biomni_jax.env.tasks.registry import family_names, get_family, register

__all__ = [
    "INPUTS_VARIABLE",
    "SPLITS",
    "TaskFamily",
    "TaskInstance",
    "family_names",
    "get_family",
    "register",
    "inputs_note",
    "sandbox_setup_code",
    "split_of",
    "with_inputs",
]
