"""Simulated patients: phenotype sets drawn from a disease's HPO annotations, plus realistic noise.

A patient of disease d shows k of d's annotated terms (k uniform in [n_min, n_max], capped by the
number of annotations); each shown term is, with probability `imprecision`, replaced by one of its
parents (clinicians often record a less specific term); and 0..noise_max unrelated terms are added,
drawn from the pool of all OMIM annotations (so common phenotypes are more likely).
"""

from __future__ import annotations

import numpy as np

from biomni_jax.env.knowledge import KnowledgeBase

# Parents this uninformative (IC in nats) are never used as imprecise replacements.
MIN_PARENT_IC = 2.0


def sample_patient_terms(
    kb: KnowledgeBase,
    disease: int,
    rng: np.random.Generator,
    n_min: int,
    n_max: int,
    imprecision: float = 0.2,
    noise_max: int = 1,
) -> list[int]:
  """Term indices of a simulated patient of `disease` (distinct, in presentation order)."""
  annotated = kb.disease_terms(disease)
  k = int(rng.integers(min(n_min, len(annotated)), min(n_max, len(annotated)) + 1))
  shown = [annotated[i] for i in rng.choice(len(annotated), size=k, replace=False)]
  terms: list[int] = []
  for t in shown:
    if rng.random() < imprecision:
      parents = [p for p in kb.term_parents(t) if kb.term_ic(p) >= MIN_PARENT_IC]
      if parents:
        t = parents[int(rng.integers(len(parents)))]
    if t not in terms:
      terms.append(t)
  pool = kb.t["disease_terms"][1]
  for _ in range(int(rng.integers(0, noise_max + 1))):
    t = int(pool[int(rng.integers(len(pool)))])
    if t not in terms:
      terms.insert(int(rng.integers(len(terms) + 1)), t)
  return terms


def unique_best(scores: dict[int, float], truth: int, margin: float) -> bool:
  """True iff `truth` outscores every other key by at least `margin`."""
  best_other = max((s for k, s in scores.items() if k != truth), default=-np.inf)
  return scores[truth] - best_other >= margin
