"""Registry of the tool functions offered to sandbox code: name, description, parameters, import path.

Importing this module loads no data: a ToolSpec names its function by `"module:function"` (the
string the sandbox's `pool.open(tools=[...])` imports), and `resolve()` imports it on demand.
Specs render into the system prompt through biomni_jax.env.protocol.system_prompt (fields
name, description, parameters, module).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from biomni_jax.registry import Registry

KNOWLEDGE = "biomni_jax.env.tools.knowledge_tools"
SEQUENCE = "biomni_jax.env.tools.sequence_tools"


@dataclasses.dataclass(frozen=True)
class ToolSpec:
  """One tool. parameters: [{name, type, description, required, default}] in call order."""

  name: str
  description: str
  module: str
  parameters: tuple[dict[str, Any], ...] = ()
  group: str = ""

  @property
  def import_string(self) -> str:
    return f"{self.module}:{self.name}"

  def resolve(self) -> Callable:
    return getattr(importlib.import_module(self.module), self.name)


def _p(
    name: str, type_: str, description: str, default: Any = dataclasses.MISSING
) -> dict[str, Any]:
  required = default is dataclasses.MISSING
  return {
      "name": name,
      "type": type_,
      "description": description,
      "required": required,
      "default": None if required else default,
  }


_HPO_TERMS = _p("hpo_terms", "list[str]", "HPO term ids, e.g. ['HP:0001250', 'HP:0000252']")
_DNA = _p("dna_sequence", "str", "DNA sequence (5'->3')")
_SEQUENCE = _p("sequence", "str", "DNA sequence")
_OMIM_ID = _p("disease_id", "str", "OMIM id, e.g. 'OMIM:193700' or '193700'")
_GENE = _p("gene", "str", "gene symbol or Ensembl id")

_SPECS = [
    # ---- knowledge (HPO / OMIM / Ensembl)
    ToolSpec(
        "get_hpo_names",
        "Names of HPO phenotype terms, in input order ('Unknown term: <id>' if not in HPO).",
        KNOWLEDGE,
        (_HPO_TERMS, _p("data_lake_path", "str", "ignored (kept for Biomni compatibility)", None)),
        "knowledge",
    ),
    ToolSpec(
        "search_hpo_terms",
        "Find HPO terms whose name or synonym contains a text.",
        KNOWLEDGE,
        (
            _p("query", "str", "text to look for, e.g. 'seizure'"),
            _p("max_results", "int", "how many", 10),
        ),
        "knowledge",
    ),
    ToolSpec(
        "get_hpo_term_info",
        "One HPO term: name, synonyms, parents, information content.",
        KNOWLEDGE,
        (_p("hpo_term", "str", "HPO id, e.g. 'HP:0001250'"),),
        "knowledge",
    ),
    ToolSpec(
        "get_disease_phenotypes",
        "HPO phenotypes annotated to an OMIM disease.",
        KNOWLEDGE,
        (_OMIM_ID,),
        "knowledge",
    ),
    ToolSpec(
        "get_disease_genes",
        "Genes (symbol, Ensembl id) linked to an OMIM disease.",
        KNOWLEDGE,
        (_OMIM_ID,),
        "knowledge",
    ),
    ToolSpec(
        "get_gene_diseases",
        "OMIM diseases (omim_id, disease_name) linked to a gene.",
        KNOWLEDGE,
        (_GENE,),
        "knowledge",
    ),
    ToolSpec(
        "get_gene_info",
        "Gene record (GRCh38 location, 1-based; strand, biotype, full name).",
        KNOWLEDGE,
        (_GENE,),
        "knowledge",
    ),
    ToolSpec(
        "gene_symbol_to_ensembl",
        "Map gene symbols to Ensembl gene ids ({symbol: ENSG... or None}).",
        KNOWLEDGE,
        (_p("gene_symbols", "list[str]", "gene symbols"),),
        "knowledge",
    ),
    ToolSpec(
        "ensembl_to_gene_symbol",
        "Map Ensembl gene ids to gene symbols ({ENSG...: symbol or None}).",
        KNOWLEDGE,
        (_p("ensembl_ids", "list[str]", "Ensembl gene ids"),),
        "knowledge",
    ),
    ToolSpec(
        "get_genes_in_region",
        "Genes overlapping a GRCh38 window (1-based inclusive), ordered by start.",
        KNOWLEDGE,
        (
            _p("chromosome", "str", "e.g. '17' or 'chr17'"),
            _p("start", "int", "window start"),
            _p("end", "int", "window end"),
            _p("biotype", "str", "Ensembl biotype filter, None for all", "protein_coding"),
        ),
        "knowledge",
    ),
    ToolSpec(
        "rank_diseases_by_phenotypes",
        "Rank OMIM diseases by phenotype similarity to a patient's HPO terms (higher score is better); "
        "optionally only diseases linked to candidate genes. Returns {ranking: [{rank, omim_id, "
        "disease_name, score, genes}], unknown_terms}.",
        KNOWLEDGE,
        (
            _HPO_TERMS,
            _p("candidate_genes", "list[str]", "restrict to these genes' diseases", None),
            _p("top_k", "int", "how many to return", 10),
        ),
        "knowledge",
    ),
    ToolSpec(
        "rank_genes_by_phenotypes",
        "Rank candidate genes by how well their best OMIM disease matches the HPO terms. Returns "
        "{ranking: [{rank, gene, symbol, ensembl_id, score, best_disease}], not_found}.",
        KNOWLEDGE,
        (
            _HPO_TERMS,
            _p("candidate_genes", "list[str]", "gene symbols or Ensembl ids"),
            _p("top_k", "int", "how many to return (None: all)", None),
        ),
        "knowledge",
    ),
    # ---- sequence (Biopython)
    ToolSpec(
        "find_restriction_sites",
        "Restriction sites of the given enzymes: recognition sequence, cut pattern and 'sites' "
        "(1-based position of the first base after each cut).",
        SEQUENCE,
        (
            _DNA,
            _p("enzymes", "list[str]", "enzyme names, e.g. ['EcoRI', 'BamHI']"),
            _p("is_circular", "bool", "circular molecule", True),
        ),
        "sequence",
    ),
    ToolSpec(
        "digest_sequence",
        "Digest with all given enzymes together. Returns fragment_lengths (sequence order), "
        "sorted_lengths, cut_positions (0-based) and fragments.",
        SEQUENCE,
        (
            _DNA,
            _p("enzyme_names", "list[str]", "enzyme names"),
            _p("is_circular", "bool", "circular molecule", True),
        ),
        "sequence",
    ),
    ToolSpec(
        "find_restriction_enzymes",
        "Commercial enzymes that cut the sequence and their sites.",
        SEQUENCE,
        (
            _SEQUENCE,
            _p("is_circular", "bool", "circular molecule", False),
        ),
        "sequence",
    ),
    ToolSpec(
        "annotate_open_reading_frames",
        "ORFs (ATG to first in-frame stop, stop included), longest first: start, end (0-based, half-open), "
        "length, strand, frame, protein.",
        SEQUENCE,
        (
            _SEQUENCE,
            _p("min_length", "int", "minimum ORF length (nt)", 30),
            _p("search_reverse", "bool", "also search the reverse strand", False),
            _p("filter_subsets", "bool", "drop ORFs nested in longer ones", False),
        ),
        "sequence",
    ),
    ToolSpec(
        "translate_sequence",
        "Protein translation of a DNA sequence ('*' for stops).",
        SEQUENCE,
        (
            _SEQUENCE,
            _p("table", "int", "NCBI codon table", 1),
            _p("to_stop", "bool", "stop at the first stop codon", False),
            _p("frame", "int", "reading frame 1, 2 or 3", 1),
        ),
        "sequence",
    ),
    ToolSpec(
        "calculate_melting_temperature",
        "Primer melting temperature in °C ('nearest_neighbor' = Biopython Tm_NN defaults, 'wallace', 'gc').",
        SEQUENCE,
        (
            _p("primer", "str", "primer sequence"),
            _p("method", "str", "nearest_neighbor | wallace | gc", "nearest_neighbor"),
        ),
        "sequence",
    ),
    ToolSpec(
        "reverse_complement",
        "Reverse complement of a DNA sequence.",
        SEQUENCE,
        (_SEQUENCE,),
        "sequence",
    ),
    ToolSpec(
        "gc_content",
        "GC fraction (0..1) of a DNA sequence.",
        SEQUENCE,
        (_SEQUENCE,),
        "sequence",
    ),
    ToolSpec(
        "pcr_simple",
        "PCR products of a primer pair on a template (exact matches); sizes include primers.",
        SEQUENCE,
        (
            _p("sequence", "str", "template DNA"),
            _p("forward_primer", "str", "5'->3'"),
            _p("reverse_primer", "str", "5'->3' (binds the bottom strand)"),
            _p("circular", "bool", "circular template", False),
        ),
        "sequence",
    ),
]

TOOLS: Registry[ToolSpec] = Registry.from_items("tool", {spec.name: spec for spec in _SPECS})


def get_tool(name: str) -> ToolSpec:
  """The spec of tool `name` (UnknownNameError, a KeyError, naming the known tools if none)."""
  return TOOLS[name]


def tool_specs(names: list[str] | None = None, group: str | None = None) -> list[ToolSpec]:
  """Specs by name (in the given order), or all of a group ('knowledge' / 'sequence'), or all."""
  if names is not None:
    return [get_tool(n) for n in names]
  return [s for s in _SPECS if group is None or s.group == group]


def import_strings(specs: list[ToolSpec]) -> list[str]:
  """The `"module:function"` strings for SandboxPool.open(tools=...)."""
  return [s.import_string for s in specs]


def resolve_all(specs: list[ToolSpec]) -> dict[str, Callable]:
  """{name: function} (imports the modules, loading the knowledge base if needed)."""
  return {s.name: s.resolve() for s in specs}
