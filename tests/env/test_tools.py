"""Tools: registry contract, hand-checked sequence cases, knowledge lookups on real data."""

import inspect

import pytest

from biomni_jax.env import protocol
from biomni_jax.env.tools import TOOLS, get_tool, import_strings, resolve_all, tool_specs
from biomni_jax.env.tools import sequence_tools as st
from biomni_jax.env.tools.registry import load_specs


def test_registry_specs_resolve_and_render_into_the_system_prompt():
  specs = tool_specs()
  assert {
      "get_hpo_names",
      "find_restriction_sites",
      "digest_sequence",
      "annotate_open_reading_frames",
      "pcr_simple",
      "rank_diseases_by_phenotypes",
      "get_genes_in_region",
  } <= set(TOOLS)
  for spec, fn in zip(specs, resolve_all(specs).values()):
    assert callable(fn) and fn.__name__ == spec.name and spec.description
    signature = inspect.signature(fn).parameters
    assert list(signature) == [p["name"] for p in spec.parameters], spec.name
    for p in spec.parameters:  # tools.toml's defaults are the function's
      default = signature[p["name"]].default
      assert p["required"] == (default is inspect.Parameter.empty), (spec.name, p["name"])
      assert p["required"] or p["default"] == default, (spec.name, p["name"])
  assert import_strings([get_tool("digest_sequence")]) == [
      "biomni_jax.env.tools.sequence_tools:digest_sequence"
  ]
  text = protocol.system_prompt(tools=tool_specs(group="sequence"))
  assert "find_restriction_sites" in text and "enzymes (list[str])" in text
  with pytest.raises(KeyError, match="unknown tool 'nope'; expected one of"):
    get_tool("nope")


def test_a_malformed_tools_file_is_named_with_the_tool_and_key(tmp_path):
  path = tmp_path / "tools.toml"
  path.write_text(
      '[[tool]]\nname = "f"\ngroup = "sequence"\ndescription = "d"\n'
      'parameters = [{ name = "x", type = "int" }]\n'
  )
  with pytest.raises(
      ValueError, match=r"tool 1 \(f\) parameter 1: .*found keys \['name', 'type'\]"
  ):
    load_specs(str(path))
  path.write_text('[[tool]]\nname = "f"\ndescription = "d"\n')
  with pytest.raises(ValueError, match=r"tool 1 \(f\): a tool needs name, group and description"):
    load_specs(str(path))
  path.write_text("[[tool]\n")
  with pytest.raises(ValueError, match="not valid TOML"):
    load_specs(str(path))


SEQ = "AAGAATTCAAGAATTCTTGGATCCAA"  # EcoRI G^AATTC at 2 and 10 (0-based G), BamHI G^GATCC at 18


def test_find_restriction_sites_hand_checked():
  sites = st.find_restriction_sites(SEQ, ["EcoRI", "BamHI", "HindIII"], is_circular=False)[
      "restriction_sites"
  ]
  # 1-based position of the first base after the cut: G at 0-based 2 -> cut before 0-based 3 -> 4.
  assert sites["EcoRI"]["sites"] == [4, 12]
  assert sites["BamHI"]["sites"] == [20]
  assert sites["HindIII"]["sites"] == [] and sites["EcoRI"]["recognition_sequence"] == "GAATTC"
  with pytest.raises(ValueError, match="restriction enzyme name"):
    st.find_restriction_sites(SEQ, ["NotAnEnzyme"])


def test_digest_linear_and_circular_hand_checked():
  linear = st.digest_sequence(SEQ, ["EcoRI", "BamHI"], is_circular=False)
  assert linear["digestion_info"]["cut_positions"] == [3, 11, 19]
  assert linear["fragment_lengths"] == [3, 8, 8, 7] and sum(linear["fragment_lengths"]) == len(SEQ)
  circular = st.digest_sequence(SEQ, "EcoRI, BamHI", is_circular=True)
  assert circular["fragment_lengths"] == [8, 8, 10] and circular["sorted_lengths"] == [8, 8, 10]
  uncut = st.digest_sequence("ACGTACGT", ["EcoRI"], is_circular=False)
  assert uncut["fragment_lengths"] == [8]


def test_translation_orfs_reverse_complement_gc():
  assert st.translate_sequence("ATGGCCTAAGG") == "MA*"
  assert st.translate_sequence("ATGGCCTAAGG", to_stop=True) == "MA"
  assert st.translate_sequence("CATGGCC", frame=2) == "MA"
  assert st.reverse_complement("AACGT") == "ACGTT"
  assert st.gc_content("GGCCAT") == pytest.approx(4 / 6)
  orfs = st.annotate_open_reading_frames("CCATGAAATTTTAGCCATGCCCTGA", min_length=6)["orfs"]
  assert [(o["start"], o["end"], o["length"], o["frame"], o["protein"]) for o in orfs] == [
      (2, 14, 12, 3, "MKF"),
      (16, 25, 9, 2, "MP"),
  ]
  # Reverse strand: the reverse complement of ATGTTTTAA sits on the minus strand at [1, 10).
  rev = st.annotate_open_reading_frames(
      "G" + st.reverse_complement("ATGTTTTAA") + "G", min_length=9, search_reverse=True
  )["orfs"]
  assert [(o["strand"], o["start"], o["end"], o["protein"]) for o in rev] == [("-", 1, 10, "MF")]


def test_melting_temperature_wallace_rule_by_hand():
  out = st.calculate_melting_temperature("AAAATTTTGGGGCCCC", method="wallace")
  assert out["tm_celsius"] == 2 * 8 + 4 * 8
  nn = st.calculate_melting_temperature("AGCTAGCTAGGCTAGCTAGCAT")["tm_celsius"]
  assert 50 < nn < 60


def test_pcr_simple_product_includes_both_primers():
  template = "AAAACCCGGGTTTTAAAAGGGCCCTTTT"
  out = st.pcr_simple(template, "CCCGGG", "GGGCCC")  # GGGCCC is its own reverse complement
  assert out["success"] and [p["size"] for p in out["products"]] == [20]
  assert out["products"][0]["forward_position"] == 4
  assert not st.pcr_simple(template, "GGGGGGGG", "GGGCCC")["success"]


def test_knowledge_tools_on_real_data():
  from biomni_jax.env.tools import knowledge_tools as kt

  assert kt.get_hpo_names(["HP:0001250", "HP:9999999"]) == ["Seizure", "Unknown term: HP:9999999"]
  assert {"id": "HP:0001250", "name": "Seizure"} in kt.search_hpo_terms("seizure", 20)
  assert kt.gene_symbol_to_ensembl(["MYH3", "NOTAGENE"]) == {
      "MYH3": "ENSG00000109063",
      "NOTAGENE": None,
  }
  assert kt.ensembl_to_gene_symbol("ENSG00000109063") == {"ENSG00000109063": "MYH3"}
  assert "193700" in [d["omim_id"] for d in kt.get_gene_diseases("MYH3")["diseases"]]
  assert "MYH3" in [g["symbol"] for g in kt.get_disease_genes("OMIM:193700")["genes"]]
  assert len(kt.get_disease_phenotypes(193700)["phenotypes"]) > 5
  window = [g["symbol"] for g in kt.get_genes_in_region("chr17", 10_600_000, 10_700_000)]
  assert "MYH3" in window and all(
      g["biotype"] == "protein_coding" for g in kt.get_genes_in_region("17", 10_600_000, 10_700_000)
  )
  ranked = kt.rank_diseases_by_phenotypes(
      ["HP:0000028", "HP:0000160", "HP:0002650", "HP:0012385"], candidate_genes=["ENSG00000109063"]
  )
  assert ranked["ranking"][0]["omim_id"] == "193700"
  assert ranked["number_of_candidates"] == len(kt.get_gene_diseases("MYH3")["diseases"])
  genes = kt.rank_genes_by_phenotypes(
      ["HP:0000028", "HP:0000160", "HP:0002650", "HP:0012385"], ["TP53", "MYH3", "XYZ_NOT_A_GENE"]
  )
  assert [r["symbol"] for r in genes["ranking"]] == ["MYH3", "TP53"] and genes["not_found"] == [
      "XYZ_NOT_A_GENE"
  ]
  with pytest.raises(ValueError, match="OMIM disease id"):
    kt.get_disease_genes("OMIM:1")
