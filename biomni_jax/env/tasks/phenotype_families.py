"""Task families built on the HPO / OMIM / Ensembl knowledge base.

  rare_disease_diagnosis   Eval1's prompt and answer format: phenotypes + the disease's gene ->
                           {"disease_name": ..., "OMIM_ID": "..."}; split by OMIM disease.
  patient_gene_detection   Eval1's prompt and answer format: phenotypes + candidate Ensembl genes ->
                           the causal gene's Ensembl id; split by causal gene.
  locus_causal_gene        phenotypes + a GRCh38 window -> the causal gene's symbol among the
                           protein-coding genes in the window; split by causal gene.

Every instance is answerable with the tools: the generator keeps a simulated patient only if the
true answer outranks every other candidate by `margin` under the knowledge tools' phenotype score
(knowledge/similarity.py); otherwise it draws again (deterministically, attempt by attempt).
"""

from __future__ import annotations

import json
import math

from biomni_jax.env import eval1
from biomni_jax.env.knowledge import KnowledgeBase, get_knowledge_base
from biomni_jax.env.tasks.base import TaskFamily, TaskInstance, split_of, with_inputs
from biomni_jax.env.tasks.patients import sample_patient_terms, unique_best
from biomni_jax.env.tasks.registry import register

MAX_ATTEMPTS = 200


class _KnowledgeFamily(TaskFamily):
  """Shared pieces: the knowledge base, per-split pools, the retry loop."""

  eval1_task = ""
  margin = 0.05

  def __init__(self, seed: int = 0, cache_dir: str | None = None):
    super().__init__(seed)
    self.cache_dir = cache_dir
    self._pools: dict[str, list[int]] = {}

  @property
  def kb(self) -> KnowledgeBase:
    return get_knowledge_base(self.cache_dir)

  def pool(self, split: str) -> list[int]:
    """Keys (disease or gene indices) of this split eligible as answers, sorted."""
    if split not in self._pools:
      self._pools[split] = self.build_pool(split)
    return self._pools[split]

  def build_pool(self, split: str) -> list[int]:
    raise NotImplementedError

  def try_instance(self, split: str, index: int, attempt: int) -> TaskInstance | None:
    raise NotImplementedError

  def make_instance(self, split: str, index: int) -> TaskInstance:
    if not self.pool(split):
      raise ValueError(f"{self.name}: the {split!r} pool is empty")
    for attempt in range(MAX_ATTEMPTS):
      instance = self.try_instance(split, index, attempt)
      if instance is not None:
        return instance
    raise RuntimeError(
        f"{self.name}: no answerable instance for split={split!r} index={index} "
        f"after {MAX_ATTEMPTS} attempts"
    )

  def grade(self, prediction, answer: str) -> float:
    return eval1.grade(self.eval1_task, prediction, answer)


def format_terms(kb: KnowledgeBase, terms: list[int]) -> str:
  return ", ".join(kb.term_id(t) for t in terms)


@register("rare_disease_diagnosis")
class RareDiseaseDiagnosis(_KnowledgeFamily):
  """Diagnose the OMIM disease of a patient given phenotypes and the disease's gene (Eval1 format).

  The given gene is linked to at least `min_candidate_diseases` OMIM diseases (as in Eval1's rows,
  e.g. MYH3 or PIEZO2), so the phenotypes must decide between them.
  """

  eval1_task = "rare_disease_diagnosis"
  tools = (
      "get_hpo_names",
      "get_gene_diseases",
      "get_disease_phenotypes",
      "rank_diseases_by_phenotypes",
      "ensembl_to_gene_symbol",
  )
  min_candidate_diseases = 2

  def _genes_for(self, d: int) -> list[int]:
    return [
        g
        for g in self.kb.disease_genes(d)
        if len(self.kb.gene_diseases(g)) >= self.min_candidate_diseases
    ]

  def build_pool(self, split: str) -> list[int]:
    kb = self.kb
    return [
        d
        for d in range(kb.n_diseases)
        if len(kb.disease_terms(d)) >= 3
        and self._genes_for(d)
        and split_of(kb.disease_ids[d]) == split
    ]

  def try_instance(self, split, index, attempt):
    kb, rng = self.kb, self.rng(split, index, attempt)
    pool = self.pool(split)
    d = pool[int(rng.integers(len(pool)))]
    genes = self._genes_for(d)
    g = genes[int(rng.integers(len(genes)))]
    terms = sample_patient_terms(kb, d, rng, n_min=3, n_max=8, noise_max=1)
    scores = kb.disease_scores(terms)
    candidates = {c: float(scores[c]) for c in kb.gene_diseases(g)}
    if not unique_best(candidates, d, self.margin):
      return None
    omim = kb.disease_ids[d].split(":")[1]
    prompt = (
        "\nTask: given a patient's phenotypes and a list of candidate genes, diagnose the rare disease "
        f"that the patient has.\nPhenotypes: {format_terms(kb, terms)}\n"
        f"Candidate genes: {[kb.gene_ids[g]]}\n\n"
        "Output format: {'disease_name': XXX, 'OMIM_ID': XXX}\n        "
    )
    answer = json.dumps({"disease_name": kb.disease_name(d), "OMIM_ID": omim})
    instance = TaskInstance(
        self.name,
        self.instance_id(split, index),
        prompt,
        answer,
        split,
        {
            "omim_id": omim,
            "gene": kb.gene_symbol(g),
            "n_candidates": len(candidates),
            "n_terms": len(terms),
            "attempt": attempt,
        },
    )
    return with_inputs(
        instance,
        {"phenotypes": [kb.term_id(t) for t in terms], "candidate_genes": [kb.gene_ids[g]]},
    )


@register("patient_gene_detection")
class PatientGeneDetection(_KnowledgeFamily):
  """Pick the causal gene among 10-21 candidate Ensembl genes given a patient's phenotypes (Eval1 format).

  Distractors are other disease-linked genes (any split) not linked to the patient's disease.
  """

  eval1_task = "patient_gene_detection"
  tools = (
      "get_hpo_names",
      "rank_genes_by_phenotypes",
      "get_gene_diseases",
      "ensembl_to_gene_symbol",
  )

  def _diseases_for(self, g: int) -> list[int]:
    return [d for d in self.kb.gene_diseases(g) if len(self.kb.disease_terms(d)) >= 5]

  def _disease_genes_all(self) -> list[int]:
    if "_all" not in self._pools:
      self._pools["_all"] = [g for g in range(len(self.kb.gene_ids)) if self.kb.gene_diseases(g)]
    return self._pools["_all"]

  def build_pool(self, split: str) -> list[int]:
    kb = self.kb
    return [
        g
        for g in self._disease_genes_all()
        if self._diseases_for(g) and split_of(kb.gene_ids[g]) == split
    ]

  def try_instance(self, split, index, attempt):
    kb, rng = self.kb, self.rng(split, index, attempt)
    pool, everyone = self.pool(split), self._disease_genes_all()
    g = pool[int(rng.integers(len(pool)))]
    diseases = self._diseases_for(g)
    d = diseases[int(rng.integers(len(diseases)))]
    terms = sample_patient_terms(kb, d, rng, n_min=8, n_max=20, noise_max=3)
    excluded = set(kb.disease_genes(d)) | {g}
    n_distractors = int(rng.integers(9, 21))
    distractors: list[int] = []
    while len(distractors) < n_distractors:
      c = everyone[int(rng.integers(len(everyone)))]
      if c not in excluded and c not in distractors:
        distractors.append(c)
    candidates = distractors + [g]
    order = rng.permutation(len(candidates))
    candidates = [candidates[i] for i in order]
    scores = kb.disease_scores(terms)
    gene_scores = {c: s for c, (s, _) in zip(candidates, kb.gene_scores(terms, candidates, scores))}
    if not unique_best(gene_scores, g, self.margin):
      return None
    prompt = (
        "\nTask: Given a patient's phenotypes and a list of candidate genes, identify the causal gene.\n"
        f"Phenotypes: {format_terms(kb, terms)}\n"
        f"Candidate genes: {', '.join(kb.gene_ids[c] for c in candidates)}\n\n"
        "Output format: {'causal_gene': [gene1]}\n        "
    )
    instance = TaskInstance(
        self.name,
        self.instance_id(split, index),
        prompt,
        kb.gene_ids[g],
        split,
        {
            "gene": kb.gene_symbol(g),
            "omim_id": kb.disease_ids[d].split(":")[1],
            "n_candidates": len(candidates),
            "n_terms": len(terms),
            "attempt": attempt,
        },
    )
    return with_inputs(
        instance,
        {
            "phenotypes": [kb.term_id(t) for t in terms],
            "candidate_genes": [kb.gene_ids[c] for c in candidates],
        },
    )


@register("locus_causal_gene")
class LocusCausalGene(_KnowledgeFamily):
  """Name the causal gene in a GRCh38 window (4-40 protein-coding genes) given a patient's phenotypes.

  Graded like Eval1's GWAS causal-gene tasks: case-insensitive, stripped equality of gene symbols.
  """

  eval1_task = "gwas_causal_gene_opentargets"
  tools = ("get_genes_in_region", "rank_genes_by_phenotypes", "get_hpo_names", "get_gene_info")

  def build_pool(self, split: str) -> list[int]:
    kb = self.kb
    out = []
    for g in range(len(kb.gene_ids)):
      if kb.t["gene_biotype"][g] != "protein_coding" or not kb.gene_diseases(g):
        continue
      if kb.gene_index(kb.gene_symbol(g)) != g or split_of(kb.gene_ids[g]) != split:
        continue
      if any(len(kb.disease_terms(d)) >= 4 for d in kb.gene_diseases(g)):
        out.append(g)
    return out

  def try_instance(self, split, index, attempt):
    kb, rng = self.kb, self.rng(split, index, attempt)
    pool = self.pool(split)
    g = pool[int(rng.integers(len(pool)))]
    diseases = [d for d in kb.gene_diseases(g) if len(kb.disease_terms(d)) >= 4]
    d = diseases[int(rng.integers(len(diseases)))]
    record = kb.gene_record(g)
    width = int(rng.integers(300_000, 1_500_001))
    left = int(rng.integers(0, width + 1))
    # Round to 10 kb like a reported locus; the window always contains the whole gene.
    start = max(1, (record["start"] - left) // 10_000 * 10_000 + 1)
    end = max(record["end"], start + width) // 10_000 * 10_000 + 10_000
    in_window = kb.genes_in_region(record["chromosome"], start, end, "protein_coding")
    in_window = [c for c in in_window if kb.gene_symbol(c)]
    if g not in in_window or not 4 <= len(in_window) <= 40:
      return None
    terms = sample_patient_terms(kb, d, rng, n_min=4, n_max=12, noise_max=2)
    scores = kb.disease_scores(terms)
    gene_scores = {c: s for c, (s, _) in zip(in_window, kb.gene_scores(terms, in_window, scores))}
    if not unique_best(gene_scores, g, self.margin):
      return None
    chrom = record["chromosome"]
    prompt = (
        "Your task is to identify the likely causal gene within a genomic locus for a patient's "
        "phenotypes. Find the protein-coding genes in the locus and provide only the symbol of the "
        "likely causal gene.\nIdentify the causal gene.\n"
        f"Phenotypes: {format_terms(kb, terms)}\n"
        f"Locus: chr{chrom}:{start}-{end} (GRCh38)\n"
    )
    instance = TaskInstance(
        self.name,
        self.instance_id(split, index),
        prompt,
        kb.gene_symbol(g),
        split,
        {
            "ensembl_id": kb.gene_ids[g],
            "omim_id": kb.disease_ids[d].split(":")[1],
            "n_candidates": len(in_window),
            "n_terms": len(terms),
            "attempt": attempt,
            "chance": 1.0 / len(in_window) if in_window else math.nan,
        },
    )
    return with_inputs(
        instance,
        {
            "phenotypes": [kb.term_id(t) for t in terms],
            "chromosome": chrom,
            "start": start,
            "end": end,
        },
    )
