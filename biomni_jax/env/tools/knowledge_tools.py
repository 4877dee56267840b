"""Knowledge tools over the offline HPO / OMIM / Ensembl knowledge base, callable from sandbox code.

The knowledge base is loaded when this module is imported: sandbox workers import tool modules
before they drop privileges, so the cache is read while it is still readable. get_hpo_names keeps
Biomni's name and behaviour (unknown ids give 'Unknown term: <id>').

Phenotype ranking scores are the mean over the query terms of the information content of the most
informative ancestor a query term shares with the disease's annotations (knowledge/similarity.py);
higher is better, a gene's score is that of its best-matching linked disease.
"""

from __future__ import annotations

from biomni_jax.env.knowledge import get_knowledge_base

_KB = get_knowledge_base()


def _terms(hpo_terms) -> list[str]:
  if isinstance(hpo_terms, str):
    return [t.strip() for t in hpo_terms.replace(";", ",").split(",") if t.strip()]
  return [str(t) for t in hpo_terms]


def _genes(genes) -> list[str]:
  if genes is None:
    return []
  if isinstance(genes, str):
    return [
        g.strip().strip("'\"[]")
        for g in genes.replace(";", ",").split(",")
        if g.strip().strip("'\"[]")
    ]
  return [str(g) for g in genes]


def _disease(disease_id, where: str) -> int:
  d = _KB.disease_index(disease_id)
  if d is None:
    raise ValueError(
        f"{where}: expected an OMIM disease id such as 'OMIM:193700', found {disease_id!r}"
    )
  return d


def _gene(gene, where: str) -> int:
  g = _KB.gene_index(gene)
  if g is None:
    raise ValueError(f"{where}: expected a gene symbol or Ensembl id (ENSG...), found {gene!r}")
  return g


def _disease_entry(d: int) -> dict:
  return {"omim_id": _KB.disease_ids[d].split(":")[1], "disease_name": _KB.disease_name(d)}


def get_hpo_names(hpo_terms, data_lake_path: str | None = None) -> list[str]:
  """Names of HPO terms, in order; 'Unknown term: <id>' for ids not in HPO. data_lake_path is ignored."""
  names = []
  for tid in _terms(hpo_terms):
    i = _KB.term_index(tid)
    names.append(_KB.term_name(i) if i is not None else f"Unknown term: {tid}")
  return names


def search_hpo_terms(query: str, max_results: int = 10) -> list[dict]:
  """HPO terms whose name or synonym contains the query text (exact name matches first)."""
  return [
      {"id": _KB.term_id(i), "name": _KB.term_name(i)} for i in _KB.search_terms(query, max_results)
  ]


def get_hpo_term_info(hpo_term: str) -> dict:
  """One HPO term: name, synonyms, parents, number of ancestors, information content over OMIM."""
  i = _KB.term_index(hpo_term)
  if i is None:
    raise ValueError(
        f"get_hpo_term_info: expected an HPO id such as 'HP:0001250', found {hpo_term!r}"
    )
  return {
      "id": _KB.term_id(i),
      "name": _KB.term_name(i),
      "synonyms": list(_KB.term_synonyms(i)),
      "parents": [{"id": _KB.term_id(p), "name": _KB.term_name(p)} for p in _KB.term_parents(i)],
      "number_of_ancestors": len(_KB.term_ancestors(i)) - 1,
      "information_content": round(_KB.term_ic(i), 3),
  }


def get_disease_phenotypes(disease_id) -> dict:
  """The HPO phenotypes annotated to an OMIM disease."""
  d = _disease(disease_id, "get_disease_phenotypes")
  return {
      **_disease_entry(d),
      "phenotypes": [
          {"id": _KB.term_id(i), "name": _KB.term_name(i)} for i in _KB.disease_terms(d)
      ],
  }


def get_disease_genes(disease_id) -> dict:
  """Genes linked to an OMIM disease (symbol and Ensembl id)."""
  d = _disease(disease_id, "get_disease_genes")
  return {
      **_disease_entry(d),
      "genes": [
          {"symbol": _KB.gene_symbol(g), "ensembl_id": _KB.gene_ids[g]}
          for g in _KB.disease_genes(d)
      ],
  }


def get_gene_diseases(gene: str) -> dict:
  """OMIM diseases linked to a gene (symbol or Ensembl id)."""
  g = _gene(gene, "get_gene_diseases")
  return {
      "symbol": _KB.gene_symbol(g),
      "ensembl_id": _KB.gene_ids[g],
      "diseases": [_disease_entry(d) for d in _KB.gene_diseases(g)],
  }


def get_gene_info(gene: str) -> dict:
  """Gene record (GRCh38, Ensembl 100; 1-based inclusive coordinates) and its number of OMIM diseases."""
  g = _gene(gene, "get_gene_info")
  return {**_KB.gene_record(g), "number_of_omim_diseases": len(_KB.gene_diseases(g))}


def gene_symbol_to_ensembl(gene_symbols) -> dict:
  """{symbol: Ensembl gene id or None}."""
  out = {}
  for symbol in _genes(gene_symbols):
    g = _KB.gene_index(symbol)
    out[symbol] = (
        _KB.gene_ids[g] if g is not None and not symbol.upper().startswith("ENSG") else None
    )
  return out


def ensembl_to_gene_symbol(ensembl_ids) -> dict:
  """{Ensembl gene id: symbol or None}."""
  out = {}
  for ensembl in _genes(ensembl_ids):
    g = _KB.gene_index(ensembl) if ensembl.upper().startswith("ENSG") else None
    out[ensembl] = _KB.gene_symbol(g) if g is not None else None
  return out


def get_genes_in_region(
    chromosome: str, start: int, end: int, biotype: str | None = "protein_coding"
) -> list[dict]:
  """Genes overlapping chromosome:start-end (GRCh38, 1-based inclusive), ordered by start.
  biotype filters by Ensembl biotype (default protein_coding; None for all)."""
  if int(end) < int(start):
    raise ValueError(f"get_genes_in_region: expected start <= end, found start={start}, end={end}")
  return [
      {k: v for k, v in _KB.gene_record(g).items() if k != "entrez_id"}
      for g in _KB.genes_in_region(chromosome, int(start), int(end), biotype)
  ]


def rank_diseases_by_phenotypes(hpo_terms, candidate_genes=None, top_k: int = 10) -> dict:
  """Rank OMIM diseases by phenotype similarity to the patient's HPO terms.

  candidate_genes (symbols or Ensembl ids), if given, restricts the ranking to diseases linked to
  at least one of them. Returns the top_k as {rank, omim_id, disease_name, score, genes}.
  """
  query, unknown = _KB.resolve_terms(_terms(hpo_terms))
  scores = _KB.disease_scores(query)
  if candidate_genes:
    pool = set()
    for gene in _genes(candidate_genes):
      g = _KB.gene_index(gene)
      if g is not None:
        pool.update(_KB.gene_diseases(g))
    pool = sorted(pool)
  else:
    pool = list(range(_KB.n_diseases))
  ranked = sorted(pool, key=lambda d: (-scores[d], d))[: max(int(top_k), 1)]
  return {
      "unknown_terms": unknown,
      "number_of_candidates": len(pool),
      "ranking": [
          {
              "rank": r + 1,
              **_disease_entry(d),
              "score": round(float(scores[d]), 4),
              "genes": [_KB.gene_symbol(g) for g in _KB.disease_genes(d)],
          }
          for r, d in enumerate(ranked)
      ],
  }


def rank_genes_by_phenotypes(hpo_terms, candidate_genes, top_k: int | None = None) -> dict:
  """Rank candidate genes by the phenotype similarity of their best-matching OMIM disease.

  Returns {ranking: [{rank, gene (as given), symbol, ensembl_id, score, best_disease}], not_found}.
  Genes with no OMIM disease score 0.
  """
  query, unknown = _KB.resolve_terms(_terms(hpo_terms))
  scores = _KB.disease_scores(query)
  rows, not_found = [], []
  for gene in _genes(candidate_genes):
    g = _KB.gene_index(gene)
    if g is None:
      not_found.append(gene)
      continue
    ((score, best),) = _KB.gene_scores(query, [g], scores)
    rows.append(
        {
            "gene": gene,
            "symbol": _KB.gene_symbol(g),
            "ensembl_id": _KB.gene_ids[g],
            "score": round(score, 4),
            "best_disease": _disease_entry(best) if best is not None else None,
        }
    )
  rows.sort(key=lambda r: -r["score"])
  for r, row in enumerate(rows):
    row["rank"] = r + 1
  return {
      "unknown_terms": unknown,
      "not_found": not_found,
      "ranking": rows[:top_k] if top_k else rows,
  }
