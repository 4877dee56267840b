"""The offline knowledge base: parsers on hand-written files, cache rebuild/load, and facts of the real release."""

import os
import pickle
import time

import numpy as np
import pytest

from biomni_jax.env.knowledge import cache, get_knowledge_base, parse, similarity, sources, tables


@pytest.fixture(scope="module")
def kb():
  return get_knowledge_base()


OBO = """format-version: 1.2

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000118
name: Phenotypic abnormality
synonym: "Organ abnormality" EXACT []
is_a: HP:0000001 ! All

[Term]
id: HP:0000002
name: Child A
alt_id: HP:0009999
is_a: HP:0000118 ! Phenotypic abnormality

[Term]
id: HP:0000003
name: Child B
is_a: HP:0000118
is_a: HP:0000002

[Term]
id: HP:0000004
name: Old
is_obsolete: true
replaced_by: HP:0000003

[Typedef]
id: part_of
name: part of
"""


def test_parse_obo_reads_names_synonyms_parents_alt_and_obsolete(tmp_path):
  path = tmp_path / "hp.obo"
  path.write_text(OBO)
  terms = parse.parse_obo(str(path))
  assert set(terms) == {"HP:0000001", "HP:0000118", "HP:0000002", "HP:0000003", "HP:0000004"}
  assert terms["HP:0000118"].synonyms == ["Organ abnormality"]
  assert terms["HP:0000003"].parents == ["HP:0000118", "HP:0000002"]
  assert terms["HP:0000002"].alt_ids == ["HP:0009999"]
  assert terms["HP:0000004"].obsolete and terms["HP:0000004"].replaced_by == "HP:0000003"


def test_ancestor_closure_of_a_diamond():
  # 0 <- 1 <- 2, 1 <- 3, 2 <- 3  (3 has parents 1 and 2)
  closure = tables._ancestor_closure([[], [0], [1], [1, 2]])
  assert [sorted(c) for c in closure] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
  assert all(c[0] == i for i, c in enumerate(closure))


def test_disease_annotations_keep_omim_phenotypes_and_drop_negations(tmp_path):
  path = tmp_path / "phenotype.hpoa"
  path.write_text(
      "#description: test\n"
      "database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\tmodifier\t"
      "aspect\tbiocuration\n"
      "OMIM:100\tDisease X\t\tHP:0000002\tPMID:1\tPCS\t\t\t\t\tP\tx\n"
      "OMIM:100\tDisease X\tNOT\tHP:0000003\tPMID:1\tPCS\t\t\t\t\tP\tx\n"
      "OMIM:100\tDisease X\t\tHP:0000006\tPMID:1\tPCS\t\t\t\t\tI\tx\n"
      "ORPHA:7\tOrpha Y\t\tHP:0000002\tPMID:1\tPCS\t\t\t\t\tP\tx\n"
  )
  names, terms = parse.parse_disease_annotations(str(path))
  assert names == {"OMIM:100": "Disease X"}
  assert terms == {"OMIM:100": ["HP:0000002"]}


def test_tsv_with_a_missing_column_names_the_file_line_and_column(tmp_path):
  path = tmp_path / "genes_to_phenotype.txt"
  path.write_text("ncbi_gene_id\tgene_symbol\thpo_id\n1\tA\tHP:1\n")
  with pytest.raises(
      ValueError, match=r"genes_to_phenotype.txt:1: expected columns \['disease_id'\]"
  ):
    parse.parse_disease_genes(str(path))


def test_similarity_matches_a_hand_computed_case():
  # Terms: 0 root (IC 0), 1 child of 0 (IC 1), 2 child of 1 (IC 2), 3 child of 0 (IC 3).
  ancestors = tables.to_csr([[0], [1, 0], [2, 1, 0], [3, 0]])
  ic = np.array([0.0, 1.0, 2.0, 3.0])
  # Disease 0 annotated with term 2 (propagated {0,1,2}); disease 1 with term 3 (propagated {0,3}).
  term_diseases = tables.to_csr([[0, 1], [0], [0], [1]])
  scores = similarity.phenotype_scores([2, 3], ancestors, term_diseases, ic, 2)
  # Disease 0: q=2 -> IC 2, q=3 -> root only -> 0; mean 1.0. Disease 1: q=2 -> 0, q=3 -> 3; mean 1.5.
  np.testing.assert_allclose(scores, [1.0, 1.5])
  np.testing.assert_allclose(
      similarity.phenotype_scores([], ancestors, term_diseases, ic, 2), [0.0, 0.0]
  )


def test_cache_is_keyed_by_source_fingerprint_and_loads_fast(kb):
  path = cache.cache_path()
  assert os.path.exists(path) and sources.fingerprint(sources.locate_sources()) in os.path.basename(
      path
  )
  assert os.stat(path).st_mode & 0o044 == 0o044, "sandbox users must be able to read the cache"
  start = time.perf_counter()
  with open(path, "rb") as f:
    pickle.load(f)
  assert time.perf_counter() - start < 1.0


def test_build_cache_into_a_fresh_dir_gives_the_same_tables(tmp_path, kb):
  path = cache.build_cache(str(tmp_path))
  with open(path, "rb") as f:
    fresh = pickle.load(f)
  assert fresh["hpo_ids"] == kb.hpo_ids and fresh["disease_ids"] == kb.disease_ids
  np.testing.assert_array_equal(fresh["disease_genes"][1], kb.t["disease_genes"][1])


def test_release_sizes_match_the_shipped_hpo_release(kb):
  assert 18_000 < len(kb.hpo_ids) < 21_000  # ~19k live HPO terms
  assert 8_000 < kb.n_diseases < 9_000  # 8,359 OMIM diseases in phenotype.hpoa
  assert 55_000 < len(kb.gene_ids) < 70_000  # Ensembl 100 genes on primary chromosomes


def test_known_facts(kb):
  assert kb.term_name(kb.term_index("HP:0001250")) == "Seizure"
  root = kb.term_index("HP:0000001")
  assert root in kb.term_ancestors(kb.term_index("HP:0001250"))
  assert kb.term_ic(root) == pytest.approx(0.0)
  myh3 = kb.gene_index("MYH3")
  assert kb.gene_ids[myh3] == "ENSG00000109063" and kb.gene_index("ensg00000109063.5") == myh3
  rec = kb.gene_record(myh3)
  assert (rec["chromosome"], rec["start"], rec["end"], rec["strand"]) == (
      "17",
      10628526,
      10657309,
      "-",
  )
  d = kb.disease_index("193700")  # Arthrogryposis, distal, type 2A (Freeman-Sheldon) is MYH3's
  assert d == kb.disease_index("OMIM:193700") and myh3 in kb.disease_genes(d)
  assert d in kb.gene_diseases(myh3)
  assert myh3 in kb.genes_in_region("chr17", 10_650_000, 10_650_001)
  assert myh3 not in kb.genes_in_region("17", 10_657_310, 10_660_000)


def test_the_real_eval1_row_for_myh3_ranks_its_disease_first_among_the_genes_diseases(kb):
  # Eval1 rare_disease_diagnosis row 21: HP:0000028, HP:0000160, HP:0002650, HP:0012385 + MYH3 -> 193700.
  terms, unknown = kb.resolve_terms(["HP:0000028", "HP:0000160", "HP:0002650", "HP:0012385"])
  assert not unknown
  ((score, best),) = kb.gene_scores(terms, [kb.gene_index("ENSG00000109063")])
  assert kb.disease_ids[best] == "OMIM:193700" and score > 0
