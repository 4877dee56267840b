"""Reading run configs (ml_collections ConfigDicts): typed field access with errors that name the field.

Configs are Python files whose `get_config()` returns a ConfigDict (see configs/demo.py). Code reads a field
with `field(config, "sft.batch_size", int, minimum=1)` so that a missing or malformed value fails before any
work starts, with a message naming the dotted field, what was expected and what was found.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from biomni_jax.model.config import ModelConfig, get_preset

_MISSING = object()


class ConfigError(ValueError):
  """A config field is missing or has a bad value; the message names the dotted field."""


def field(
    config: Any,
    dotted: str,
    kind: type | tuple[type, ...] | None = None,
    *,
    default: Any = _MISSING,
    minimum: Optional[float] = None,
    choices: Optional[tuple] = None,
) -> Any:
  """The value of `config.<dotted>` checked against `kind`, `minimum` and `choices`.

  `default` is returned when the field (or a parent) is absent; without a default, absence is an error.
  An int is accepted where a float is expected; a bool is never accepted as a number.
  """
  node = config
  for i, part in enumerate(dotted.split(".")):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      if default is not _MISSING:
        return default
      where = ".".join(dotted.split(".")[:i]) or "the config"
      raise ConfigError(f"config field {dotted!r}: missing ({where} has no {part!r})") from None
  if kind is not None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(node, int) and not isinstance(node, bool):
      node = float(node)
    numeric = any(k in (int, float) for k in kinds)
    if not isinstance(node, kinds) or (numeric and isinstance(node, bool) and bool not in kinds):
      names = " or ".join(k.__name__ for k in kinds)
      raise ConfigError(
          f"config field {dotted!r}: expected {names}, found {node!r} ({type(node).__name__})"
      )
  if minimum is not None and node < minimum:
    raise ConfigError(f"config field {dotted!r}: expected >= {minimum}, found {node!r}")
  if choices is not None and node not in choices:
    raise ConfigError(f"config field {dotted!r}: expected one of {choices}, found {node!r}")
  return node


def model_config(config: Any, vocab_size: Optional[int] = None) -> ModelConfig:
  """The ModelConfig of `config.model`: preset `model.preset` with `model.overrides` applied.

  `vocab_size`, when given (an embedded tokenizer's size), replaces the preset's unless an override sets it.
  """
  preset = field(config, "model.preset", str)
  overrides = dict(field(config, "model.overrides", default={}) or {})
  if vocab_size is not None:
    overrides.setdefault("vocab_size", int(vocab_size))
  try:
    return get_preset(preset, **overrides)
  except KeyError as e:
    raise ConfigError(f"config field 'model.preset': {e.args[0]}") from None
  except TypeError as e:
    raise ConfigError(f"config field 'model.overrides': {e}") from None
  except ValueError as e:
    raise ConfigError(f"config field 'model.overrides': {e}") from None


def mesh_shape(config: Any) -> dict[str, int]:
  """{data, fsdp, tensor, sequence} sizes of `config.mesh` (absent axes are 1; one may be -1)."""
  return {
      axis: field(config, f"mesh.{axis}", int, default=1)
      for axis in ("data", "fsdp", "tensor", "sequence")
  }


def load_config_file(path, overrides: Mapping[str, Any] | None = None):
  """`get_config()` of a config file (configs/ is not a package), with dotted overrides applied in-process,
  e.g. {"sft.num_epochs": 2, "model.overrides.hidden_size": 32}."""
  import importlib.util
  import os

  path = os.fspath(path)
  spec = importlib.util.spec_from_file_location(
      f"config_{os.path.splitext(os.path.basename(path))[0]}", path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


def sibling_config(config_file: str, name: str):
  """`get_config()` of the config file `name` next to `config_file`: lets a config state only what differs
  from a base recipe (configs/qwen3_32b_*.py derive from configs/qwen3_8b_*.py)."""
  import os

  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`key=value` strings (a script's repeated --set flag) as dotted overrides for `load_config_file`:
  each value is a Python literal if it parses as one ("3", "[[32, 500]]", "'x'"), else the string.
  """
  import ast

  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"config override {item!r}: expected key=value")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out
