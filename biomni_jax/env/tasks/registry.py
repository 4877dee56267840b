"""Registry of task families, chosen by config string (e.g. "rare_disease_diagnosis")."""

from __future__ import annotations

from biomni_jax.env.tasks.base import TaskFamily
from biomni_jax.registry import Registry

FAMILIES: Registry[type[TaskFamily]] = Registry("task family")


def register(name: str):
  """Class decorator: make the family constructible as get_family(name, **kwargs)."""

  def wrap(cls):
    FAMILIES.add(name, cls)
    cls.name = name
    return cls

  return wrap


def family_names() -> list[str]:
  return FAMILIES.names()


def get_family(name: str, **kwargs) -> TaskFamily:
  """A new instance of the family registered as `name` (UnknownNameError, a KeyError, if none is)."""
  return FAMILIES[name](**kwargs)
