"""Named families of interchangeable implementations, chosen by config string.

Each family is one Registry, filled by a decorator beside each definition (the pattern of Tunix's
function registry, used throughout tunix/rl/algo_core.py):

    ADVANTAGES = Registry("advantage estimator")

    @ADVANTAGES.register("grpo")
    def grpo(rewards, group_ids, num_groups, *, eps=1e-6): ...

    ADVANTAGES["grpo"]          # the function; an unknown name raises UnknownNameError
    tuple(ADVANTAGES)           # ("grpo", ...) in registration order: config `choices` read it

A Registry is a read-only Mapping from name to implementation; names are registered once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
  """A name nothing is registered under. Both a KeyError (a missing key of the Mapping) and a
  ValueError (a bad config value), whichever its caller catches."""

  def __str__(self) -> str:
    return str(self.args[0])  # KeyError would show the message quoted


class Registry(Mapping[str, T], Generic[T]):
  """name -> implementation of one kind (e.g. "loss aggregation"); see the module docstring."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  @classmethod
  def from_items(cls, kind: str, items: Mapping[str, T]) -> "Registry[T]":
    """A registry holding `items` (for entries that are data, not decorated definitions)."""
    registry = cls(kind)
    for name, value in items.items():
      registry.add(name, value)
    return registry

  def add(self, name: str, value: T) -> None:
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self.kind} registry: expected a non-empty name, found {name!r}")
    if name in self._entries:
      raise ValueError(f"{self.kind} registry: {name!r} is registered twice")
    self._entries[name] = value

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: register the decorated definition under `name` and return it unchanged."""

    def decorate(value: T) -> T:
      self.add(name, value)
      return value

    return decorate

  def names(self) -> list[str]:
    """The registered names, sorted (for messages)."""
    return sorted(self._entries)

  def __getitem__(self, name: str) -> T:
    try:
      return self._entries[name]
    except (KeyError, TypeError):
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}; expected one of {self.names()}"
      ) from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {list(self._entries)})"
