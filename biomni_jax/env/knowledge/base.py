"""KnowledgeBase: read-only lookups over the cached tables (HPO, OMIM diseases, genes).

Identifiers accepted everywhere: HPO 'HP:0001250' (alt and obsolete ids resolve to the live term),
diseases 'OMIM:193700' / '193700' / 193700, genes by symbol (case-insensitive) or Ensembl id
('ENSG00000109063', a '.version' suffix is ignored).
"""

from __future__ import annotations

import bisect

import numpy as np

from biomni_jax.env.knowledge.similarity import csr_row, phenotype_scores


class KnowledgeBase:
  """Owns the tables of cache.load_tables(); every method is a pure lookup."""

  def __init__(self, tables: dict):
    self.t = tables
    self.hpo_ids: list[str] = tables["hpo_ids"]
    self.disease_ids: list[str] = tables["disease_ids"]
    self.gene_ids: list[str] = tables["gene_ensembl_id"]
    self._hpo_index = {tid: i for i, tid in enumerate(self.hpo_ids)}
    self._hpo_index.update(tables["hpo_alias"])
    self._disease_index = {d: i for i, d in enumerate(self.disease_ids)}
    self._ensembl_index = {g: i for i, g in enumerate(self.gene_ids)}
    self._symbol_index: dict[str, int] = {}
    for i, symbol in enumerate(tables["gene_symbol"]):
      # Prefer the gene that carries disease links, then protein-coding, for duplicated symbols.
      if not symbol:
        continue
      key = symbol.upper()
      j = self._symbol_index.get(key)
      if j is None or self._symbol_rank(i) < self._symbol_rank(j):
        self._symbol_index[key] = i
    # Per-chromosome gene indices sorted by start, for window queries.
    self._by_chromosome: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    chroms = np.array(tables["gene_chromosome"])
    for chrom in np.unique(chroms):
      idx = np.nonzero(chroms == chrom)[0]
      idx = idx[np.argsort(tables["gene_start"][idx], kind="stable")]
      self._by_chromosome[str(chrom)] = (idx, tables["gene_start"][idx])
    self._max_gene_length = int((tables["gene_end"] - tables["gene_start"]).max()) + 1

  def _symbol_rank(self, g: int) -> tuple[int, int]:
    has_disease = len(csr_row(self.t["gene_diseases"], g)) > 0
    return (0 if has_disease else 1, 0 if self.t["gene_biotype"][g] == "protein_coding" else 1)

  # ------------------------------------------------------------------ HPO
  def term_index(self, hpo_id: str) -> int | None:
    return self._hpo_index.get(str(hpo_id).strip().upper().replace("HP_", "HP:"))

  def term_id(self, i: int) -> str:
    return self.hpo_ids[i]

  def term_name(self, i: int) -> str:
    return self.t["hpo_names"][i]

  def term_synonyms(self, i: int) -> tuple[str, ...]:
    return self.t["hpo_synonyms"][i]

  def term_parents(self, i: int) -> list[int]:
    return [int(p) for p in csr_row(self.t["hpo_parents"], i)]

  def term_ancestors(self, i: int) -> list[int]:
    """Ancestors of term i, itself first."""
    return [int(a) for a in csr_row(self.t["hpo_ancestors"], i)]

  def term_ic(self, i: int) -> float:
    return float(self.t["hpo_ic"][i])

  def search_terms(self, query: str, limit: int = 10) -> list[int]:
    """Terms whose name or a synonym contains `query` (case-insensitive); exact names first."""
    q = query.strip().lower()
    exact, partial = [], []
    for i, name in enumerate(self.t["hpo_names"]):
      texts = [name.lower()] + [s.lower() for s in self.t["hpo_synonyms"][i]]
      if q in texts:
        exact.append(i)
      elif any(q in s for s in texts):
        partial.append(i)
    return (exact + sorted(partial, key=lambda i: len(self.t["hpo_names"][i])))[:limit]

  # ------------------------------------------------------------------ diseases
  def disease_index(self, disease) -> int | None:
    text = str(disease).strip().upper()
    if not text.startswith("OMIM:"):
      text = "OMIM:" + text
    return self._disease_index.get(text)

  def disease_name(self, d: int) -> str:
    return self.t["disease_names"][d]

  def disease_terms(self, d: int) -> list[int]:
    return [int(i) for i in csr_row(self.t["disease_terms"], d)]

  def disease_genes(self, d: int) -> list[int]:
    return [int(g) for g in csr_row(self.t["disease_genes"], d)]

  @property
  def n_diseases(self) -> int:
    return len(self.disease_ids)

  # ------------------------------------------------------------------ genes
  def gene_index(self, gene) -> int | None:
    text = str(gene).strip()
    if text.upper().startswith("ENSG"):
      return self._ensembl_index.get(text.upper().split(".")[0])
    return self._symbol_index.get(text.upper())

  def gene_symbol(self, g: int) -> str:
    return self.t["gene_symbol"][g]

  def gene_diseases(self, g: int) -> list[int]:
    return [int(d) for d in csr_row(self.t["gene_diseases"], g)]

  def gene_record(self, g: int) -> dict:
    t = self.t
    return {
        "ensembl_id": t["gene_ensembl_id"][g],
        "symbol": t["gene_symbol"][g],
        "name": t["gene_full_name"][g],
        "chromosome": t["gene_chromosome"][g],
        "start": int(t["gene_start"][g]),
        "end": int(t["gene_end"][g]),
        "strand": t["gene_strand"][g],
        "biotype": t["gene_biotype"][g],
        "entrez_id": t["gene_entrez"][g],
    }

  def genes_in_region(
      self, chromosome: str, start: int, end: int, biotype: str | None = None
  ) -> list[int]:
    """Genes overlapping [start, end] (1-based inclusive, GRCh38), ordered by start."""
    chrom = str(chromosome).strip()
    chrom = chrom[3:] if chrom.lower().startswith("chr") else chrom
    chrom = "MT" if chrom.upper() in ("M", "MT") else chrom.upper()
    if chrom not in self._by_chromosome:
      return []
    idx, starts = self._by_chromosome[chrom]
    lo = bisect.bisect_left(starts, start - self._max_gene_length)
    hi = bisect.bisect_right(starts, end)
    hits = [int(g) for g in idx[lo:hi] if self.t["gene_end"][g] >= start]
    if biotype:
      hits = [g for g in hits if self.t["gene_biotype"][g] == biotype]
    return hits

  # ------------------------------------------------------------------ phenotype matching
  def resolve_terms(self, hpo_terms) -> tuple[list[int], list[str]]:
    """(distinct term indices, unknown ids) for a list of HPO ids."""
    known, unknown = [], []
    for tid in hpo_terms:
      i = self.term_index(tid)
      if i is None:
        unknown.append(str(tid))
      elif i not in known:
        known.append(i)
    return known, unknown

  def disease_scores(self, term_indices: list[int]) -> np.ndarray:
    """Phenotype similarity of the query to every disease, float64 [n_diseases] (similarity.py)."""
    return phenotype_scores(
        term_indices,
        self.t["hpo_ancestors"],
        self.t["term_diseases"],
        self.t["hpo_ic"],
        self.n_diseases,
    )

  def gene_scores(
      self, term_indices: list[int], genes: list[int], disease_scores: np.ndarray | None = None
  ) -> list[tuple[float, int | None]]:
    """Per gene: (best score over its linked diseases, that disease or None); 0.0 if no disease."""
    scores = self.disease_scores(term_indices) if disease_scores is None else disease_scores
    out = []
    for g in genes:
      diseases = self.gene_diseases(g)
      if not diseases:
        out.append((0.0, None))
        continue
      best = max(diseases, key=lambda d: (scores[d], -d))
      out.append((float(scores[best]), best))
    return out
