"""Device meshes and the one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter and activation (`embed`, `heads`, `batch`, ...); the rules
below decide where each lives on the mesh `(data, fsdp, tensor, sequence)`. Changing the parallelism
layout is a change of rules or mesh shape, never of model code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated).
# Parameters: `embed` is fully sharded over fsdp (ZeRO-3 style), the "wide" dims over tensor (Megatron).
# Activations use the `act_*` names so that e.g. the embed dim of an activation is not sharded over fsdp
# while its batch already is.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("kv_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("cache_slots", ("data", "fsdp")),
)

# The inference engine's table, for the tensor-parallel mesh of one engine replica (sampling/layout.py):
# weights whole along `embed` (no FSDP gathers per decode step) and split over `tensor` along heads, mlp
# and vocab like the trainer's; rows, positions and cache slots whole (a prefill chunk is one row, which no
# axis can split; data parallelism is several replicas, each with its own cache).
SAMPLER_RULES: tuple[tuple[str, Any], ...] = tuple(
    (name, {"batch": None, "length": None, "embed": None, "cache_slots": None}.get(name, target))
    for name, target in DEFAULT_RULES
)


def make_mesh(
    data: int = 1,
    fsdp: int = 1,
    tensor: int = 1,
    sequence: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A mesh with axes (data, fsdp, tensor, sequence); one size may be -1 meaning "all remaining devices".

  Default devices: `global_devices()`, every process's devices grouped by process, so that the leading
  (batch) axes split across hosts and each host's rows live on its own devices."""
  devices = list(global_devices() if devices is None else devices)
  sizes = [data, fsdp, tensor, sequence]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes {sizes}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
        f"found {len(devices)}"
    )
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def global_devices() -> list[jax.Device]:
  """All devices, process 0's first: one order that every process computes the same way."""
  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """A mesh plus the logical->mesh rules; hashable so it can be a static jit argument and module field."""

  mesh: Mesh
  rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

  def spec(self, logical_axes: Sequence[str | None]) -> P:
    return logical_to_spec(logical_axes, self.rules, self.mesh)

  def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(logical_axes))

  def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, self.sharding(logical_axes))

  def axis_size(self, logical_axis: str) -> int:
    mesh_axes = dict(self.rules).get(logical_axis)
    if mesh_axes is None:
      return 1
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
    return math.prod(self.mesh.shape[a] for a in mesh_axes)


def platform_of(sharding: ShardingRules | None) -> str:
  """'cpu', 'tpu', ...: the mesh's devices (which may be an ahead-of-time TPU topology on a CPU host), or the
  default devices without a mesh."""
  return (sharding.mesh.devices.flat[0] if sharding is not None else jax.devices()[0]).platform


def logical_to_spec(logical_axes: Sequence[str | None], rules, mesh: Mesh | None = None) -> P:
  """Maps logical names to a PartitionSpec; a mesh axis is used at most once (later uses replicate)."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
    target = table[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


def logical_shardings(logical_tree, sharding_rules: ShardingRules):
  """A pytree of logical-axis tuples (e.g. from `model.param_logical_axes`) -> NamedShardings."""
  return jax.tree.map(
      lambda axes: sharding_rules.sharding(axes),
      logical_tree,
      is_leaf=lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x),
  )


def shard_pytree(tree, shardings):
  """Places a host pytree onto the mesh (works multi-host: each process supplies only its shards)."""

  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(put, tree, shardings)
