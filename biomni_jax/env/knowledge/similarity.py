"""Phenotype-set similarity between a patient's HPO terms and every disease (pure numpy).

For a query term q and a disease d with propagated annotation set A*(d) (its terms and all their
ancestors), the match value is the information content of their most informative common ancestor:
    m(q, d) = max_{a in anc(q) ∩ A*(d)} IC(a),   IC(a) = -ln(p(a)),  m = 0 if nothing is shared,
and the disease score is the mean over the query (one-sided Resnik best-match average):
    score(Q, d) = (1 / |Q|) * sum_{q in Q} m(q, d).
Using the inverted index term -> diseases (propagated), m(q, .) is computed for all diseases at once
by visiting anc(q) in increasing IC order and overwriting: the last write is the maximum.
"""

from __future__ import annotations

import numpy as np


def csr_row(csr: tuple[np.ndarray, np.ndarray], i: int) -> np.ndarray:
  offsets, values = csr
  return values[offsets[i] : offsets[i + 1]]


def phenotype_scores(
    query_terms: list[int],
    ancestors: tuple[np.ndarray, np.ndarray],
    term_diseases: tuple[np.ndarray, np.ndarray],
    ic: np.ndarray,
    n_diseases: int,
) -> np.ndarray:
  """score(Q, d) for every disease d: float64 [n_diseases]; zeros if the query is empty."""
  total = np.zeros(n_diseases, dtype=np.float64)
  if not query_terms:
    return total
  for q in query_terms:
    match = np.zeros(n_diseases, dtype=np.float64)
    anc = csr_row(ancestors, q)
    for a in anc[np.argsort(ic[anc], kind="stable")]:
      match[csr_row(term_diseases, int(a))] = ic[a]
    total += match
  return total / len(query_terms)
