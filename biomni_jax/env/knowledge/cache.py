"""Build the knowledge tables once into a pickle cache; load them back in well under a second.

The cache lives in $BIOMNI_JAX_CACHE_DIR, else ~/.cache/biomni_jax, as
`knowledge_<fingerprint>.pkl`; a new source version or schema gets a new file name, so stale caches
are never read. Writes go to a temporary file renamed into place (safe under concurrent builders),
and the file is made world-readable so sandbox workers running as another user can read it too.
"""

from __future__ import annotations

import os
import pickle
import tempfile

from biomni_jax.env.knowledge import sources, tables

CACHE_ENV_VAR = "BIOMNI_JAX_CACHE_DIR"


def default_cache_dir() -> str:
  return os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "biomni_jax"
  )


def cache_path(cache_dir: str | None = None) -> str:
  files = sources.locate_sources()
  return os.path.join(
      cache_dir or default_cache_dir(), f"knowledge_{sources.fingerprint(files)}.pkl"
  )


def build_cache(cache_dir: str | None = None) -> str:
  """Parse the sources and (re)write the cache file; returns its path."""
  path = cache_path(cache_dir)
  data = tables.build_tables(sources.locate_sources())
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".knowledge_", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def load_tables(cache_dir: str | None = None, build_if_missing: bool = True) -> dict:
  """The cached tables, building them first if the cache for this source version is absent."""
  path = cache_path(cache_dir)
  if not os.path.exists(path):
    if not build_if_missing:
      raise FileNotFoundError(
          f"knowledge cache: expected {path} (run biomni_jax.env.knowledge.build_cache()), not found"
      )
    build_cache(cache_dir)
  with open(path, "rb") as f:
    return pickle.load(f)
