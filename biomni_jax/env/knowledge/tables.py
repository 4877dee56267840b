"""Join the parsed release files into integer-indexed tables (the cache's content).

Layout (all indices int32; a "CSR" is (offsets [n + 1], values [nnz]) with row i at
values[offsets[i]:offsets[i + 1]]):
  hpo_ids [T] str, hpo_names [T] str, hpo_synonyms [T] tuple[str], hpo_alias {alt/obsolete id: index}
  hpo_parents CSR over T (is_a), hpo_ancestors CSR over T (each term's ancestors, itself included)
  hpo_ic [T] float32: -ln(#OMIM diseases annotated with the term or a descendant / #OMIM diseases
    with any phenotype); terms annotated to no disease get the maximum, ln(#diseases with any phenotype)
  disease_ids [D] 'OMIM:nnnnnn', disease_names [D], disease_terms CSR over D (direct annotations),
  disease_genes CSR over D (gene indices), term_diseases CSR over T (propagated: diseases annotated
    with the term or any descendant)
  gene_* [G] columns (ensembl_id, symbol, chromosome, start, end (1-based inclusive), strand, biotype,
    entrez, full_name), gene_diseases CSR over G
"""

from __future__ import annotations

import math

import numpy as np

from biomni_jax.env.knowledge import parse
from biomni_jax.env.knowledge.sources import SourceFiles


def to_csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Ragged int lists -> (offsets int32 [n + 1], values int32 [sum of lengths])."""
  lengths = np.array([len(r) for r in rows], dtype=np.int64)
  offsets = np.zeros(len(rows) + 1, dtype=np.int32)
  np.cumsum(lengths, out=offsets[1:])
  values = np.fromiter((v for r in rows for v in r), dtype=np.int32, count=int(lengths.sum()))
  return offsets, values


def _ancestor_closure(parents: list[list[int]]) -> list[list[int]]:
  """Each node's ancestors (itself first) in a DAG given as parent lists; iterative DFS with memo."""
  closure: list[list[int] | None] = [None] * len(parents)
  for root in range(len(parents)):
    if closure[root] is not None:
      continue
    stack = [root]
    while stack:
      node = stack[-1]
      pending = [p for p in parents[node] if closure[p] is None]
      if pending:
        stack.extend(pending)
        continue
      stack.pop()
      if closure[node] is not None:
        continue
      seen = {node}
      ordered = [node]
      for p in parents[node]:
        for a in closure[p]:
          if a not in seen:
            seen.add(a)
            ordered.append(a)
      closure[node] = ordered
  return closure


def build_tables(files: SourceFiles) -> dict:
  """Parse every source file and return the cache's tables (see the module docstring)."""
  obo = parse.parse_obo(files.hp_obo)
  live = [t for t in obo.values() if not t.obsolete and t.id]
  hpo_ids = [t.id for t in live]
  index = {tid: i for i, tid in enumerate(hpo_ids)}
  alias: dict[str, int] = {}
  for t in live:
    for alt in t.alt_ids:
      alias[alt] = index[t.id]
  for t in obo.values():
    if t.obsolete and t.replaced_by in index:
      alias[t.id] = index[t.replaced_by]
  parents = [[index[p] for p in t.parents if p in index] for t in live]
  ancestors = _ancestor_closure(parents)

  def resolve(term_id: str) -> int | None:
    return index.get(term_id, alias.get(term_id))

  names, annotations = parse.parse_disease_annotations(files.phenotype_hpoa)
  gene_links = parse.parse_disease_genes(files.genes_to_phenotype)
  genes = parse.parse_ensembl_genes(files.ensembl_genes)

  # Entrez id first (stable across renames), symbol as fallback; protein-coding rows win ties.
  by_entrez: dict[str, int] = {}
  by_symbol: dict[str, int] = {}
  order = sorted(
      range(len(genes["ensembl_id"])), key=lambda g: genes["biotype"][g] != "protein_coding"
  )
  for g in order:
    if genes["entrez"][g]:
      by_entrez.setdefault(genes["entrez"][g], g)
    if genes["symbol"][g]:
      by_symbol.setdefault(genes["symbol"][g].upper(), g)

  disease_ids = sorted(set(names) | set(annotations), key=lambda d: int(d.split(":")[1]))
  disease_terms, disease_genes = [], []
  for d in disease_ids:
    direct = []
    for tid in annotations.get(d, ()):
      i = resolve(tid)
      if i is not None and i not in direct:
        direct.append(i)
    disease_terms.append(direct)
    linked = []
    for entrez, symbol in gene_links.get(d, ()):
      g = by_entrez.get(entrez, by_symbol.get(symbol.upper()))
      if g is not None and g not in linked:
        linked.append(g)
    disease_genes.append(linked)

  n_terms, n_diseases = len(hpo_ids), len(disease_ids)
  term_diseases: list[list[int]] = [[] for _ in range(n_terms)]
  for d, direct in enumerate(disease_terms):
    propagated = set()
    for i in direct:
      propagated.update(ancestors[i])
    for a in propagated:
      term_diseases[a].append(d)
  # Probabilities are over diseases with at least one phenotype, so the root's IC is exactly 0.
  n_annotated = sum(1 for direct in disease_terms if direct)
  counts = np.array([len(r) for r in term_diseases], dtype=np.float64)
  ic = np.where(counts > 0, -np.log(np.maximum(counts, 1) / n_annotated), math.log(n_annotated))

  gene_diseases: list[list[int]] = [[] for _ in genes["ensembl_id"]]
  for d, linked in enumerate(disease_genes):
    for g in linked:
      gene_diseases[g].append(d)

  return {
      "hpo_ids": hpo_ids,
      "hpo_names": [t.name for t in live],
      "hpo_synonyms": [tuple(t.synonyms) for t in live],
      "hpo_alias": alias,
      "hpo_parents": to_csr(parents),
      "hpo_ancestors": to_csr(ancestors),
      "hpo_ic": ic.astype(np.float32),
      "disease_ids": disease_ids,
      "disease_names": [names.get(d, "") for d in disease_ids],
      "disease_terms": to_csr(disease_terms),
      "disease_genes": to_csr(disease_genes),
      "term_diseases": to_csr(term_diseases),
      "gene_diseases": to_csr(gene_diseases),
      **{f"gene_{k}": v for k, v in genes.items()},
  }
