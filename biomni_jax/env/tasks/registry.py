"""Registry of task families, chosen by config string (e.g. "rare_disease_diagnosis")."""

from __future__ import annotations

from typing import Callable

from biomni_jax.env.tasks.base import TaskFamily

_FAMILIES: dict[str, Callable[..., TaskFamily]] = {}


def register(name: str):
  """Class decorator: make the family constructible as get_family(name, **kwargs)."""

  def wrap(cls):
    if name in _FAMILIES:
      raise ValueError(f"task registry: family {name!r} is registered twice")
    cls.name = name
    _FAMILIES[name] = cls
    return cls

  return wrap


def family_names() -> list[str]:
  return sorted(_FAMILIES)


def get_family(name: str, **kwargs) -> TaskFamily:
  if name not in _FAMILIES:
    raise KeyError(f"task registry: expected one of {family_names()}, found {name!r}")
  return _FAMILIES[name](**kwargs)
