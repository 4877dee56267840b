"""Registry of the tool functions offered to sandbox code: name, description, parameters, import path.

Importing this module loads no data: a ToolSpec names its function by `"module:function"` (the
string the sandbox's `pool.open(tools=[...])` imports), and `resolve()` imports it on demand. The specs
are data, in tools.toml beside this module.
Specs render into the system prompt through biomni_jax.env.protocol.system_prompt (fields
name, description, parameters, module).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
from typing import Any, Callable

from biomni_jax.registry import Registry


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


TOOLS_FILE = os.path.join(os.path.dirname(__file__), "tools.toml")


_TOOL_KEYS = {"name", "group", "description", "parameters"}
_PARAMETER_KEYS = {"name", "type", "description", "default", "required"}


def _parameter(entry: dict[str, Any], where: str) -> dict[str, Any]:
  missing = {"name", "type", "description"} - set(entry)
  if missing or set(entry) - _PARAMETER_KEYS:
    raise ValueError(
        f"{where}: a parameter needs name, type and description (and may have default or "
        f"required); found keys {sorted(entry)}"
    )
  required = entry.get("required", "default" not in entry)
  return {
      "name": entry["name"],
      "type": entry["type"],
      "description": entry["description"],
      "required": required,
      "default": None if required else entry.get("default"),
  }


def load_specs(path: str = TOOLS_FILE) -> list[ToolSpec]:
  """The [[tool]] tables of `path` (tools.toml), in file order; ValueError naming the file, the tool
  and the key when one is malformed."""
  with open(path, "rb") as f:
    try:
      tools = tomllib.load(f).get("tool", [])
    except tomllib.TOMLDecodeError as e:
      raise ValueError(f"{path}: not valid TOML: {e}") from None
  specs = []
  for i, t in enumerate(tools):
    where = f"{path}: tool {i + 1} ({t.get('name', 'no name')})"
    if {"name", "group", "description"} - set(t) or set(t) - _TOOL_KEYS:
      raise ValueError(
          f"{where}: a tool needs name, group and description (and may have parameters); found "
          f"keys {sorted(t)}"
      )
    parameters = t.get("parameters", [])
    specs.append(
        ToolSpec(
            t["name"],
            t["description"],
            f"biomni_jax.env.tools.{t['group']}_tools",
            tuple(_parameter(p, f"{where} parameter {k + 1}") for k, p in enumerate(parameters)),
            t["group"],
        )
    )
  return specs


_SPECS = load_specs()
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
