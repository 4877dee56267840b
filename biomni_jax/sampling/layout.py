"""Where the sampler lives on a host, and how the trainer's weights get there.

A host's sampler mesh is `data x tensor` of its own devices: `data` engine replicas (each its own
`Engine`, thread and KV cache), each on `tensor` devices that split heads, mlp and vocabulary
(`sharding.SAMPLER_RULES`). Nothing an engine runs involves another host's devices, so hosts may issue
their engine calls in any order and number.

Publishing (`SamplerLayout.publish`) is the one collective between trainer and samplers: every process
calls it after the same optimizer step. When the samplers cover every device, one jit reshards the
params from the trainer's layout (e.g. FSDP over the pod) into the *publish mesh* [hosts, data, tensor]
(replicated over hosts and data, split over tensor), whose per-host slices are exactly the local engine
meshes: each replica's params are assembled from the shards already on its devices, with no further
copy. Otherwise (samplers on a subset of the devices) the params are first replicated over the trainer's
mesh and each replica copies the host-local value onto its devices.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

from biomni_jax import model as M
from biomni_jax.sharding import SAMPLER_RULES, ShardingRules, global_devices

_PUBLISH_AXES = ("hosts", "data", "fsdp", "tensor", "sequence")


def _resolve(data: int, tensor: int, available: int) -> tuple[int, int]:
  if data == -1 and tensor == -1:
    raise ValueError("sampler mesh: at most one of data, tensor may be -1")
  if data == -1:
    data = available // tensor if tensor > 0 and available % tensor == 0 else 0
  elif tensor == -1:
    tensor = available // data if data > 0 and available % data == 0 else 0
  if data < 1 or tensor < 1 or data * tensor > available:
    raise ValueError(
        f"sampler mesh data={data} x tensor={tensor} does not fit the {available} devices of this "
        f"host (sizes must be >= 1, a -1 size must divide the devices evenly)"
    )
  return data, tensor


class SamplerLayout:
  """This host's engine replicas (`replicas`: one ShardingRules per replica) and the publish mesh.
  Build with `SamplerLayout.create`."""

  def __init__(self, model_config: M.ModelConfig, data: int, tensor: int, publish_mesh: Mesh):
    self.model_config, self.data, self.tensor, self.publish_mesh = (
        model_config,
        data,
        tensor,
        publish_mesh,
    )
    here = [
        p
        for p, row in enumerate(publish_mesh.devices)
        if row.flat[0].process_index == jax.process_index()
    ]
    self.replicas = tuple(
        ShardingRules(
            Mesh(
                publish_mesh.devices[here[0], r].reshape(1, 1, tensor, 1),
                ("data", "fsdp", "tensor", "sequence"),
                axis_types=(AxisType.Auto,) * 4,
            ),
            SAMPLER_RULES,
        )
        for r in range(data)
    )
    self._publish_shardings = M.param_shardings(
        model_config, ShardingRules(publish_mesh, SAMPLER_RULES)
    )
    self._reshard = jax.jit(
        functools.partial(_copy, dtype=model_config.compute_dtype),
        out_shardings=self._publish_shardings,
    )
    self._replicate: dict[Mesh, Any] = {}  # trainer mesh -> jitted copy to replicated

  @classmethod
  def create(cls, model_config: M.ModelConfig, data: int = 1, tensor: int = 1) -> "SamplerLayout":
    """`data` replicas of `tensor` devices each, from this host's devices in `global_devices()` order
    (one size may be -1: the rest of the host's devices). Every host must use the same sizes."""
    by_host: dict[int, list] = {}
    for d in global_devices():
      by_host.setdefault(d.process_index, []).append(d)
    counts = {len(v) for v in by_host.values()}
    if len(counts) != 1:
      raise ValueError(f"hosts have different device counts {sorted(counts)}; expected equal")
    data, tensor = _resolve(data, tensor, counts.pop())
    kv, vocab = model_config.num_key_value_heads, model_config.padded_vocab_size
    for name, size in (("num_key_value_heads", kv), ("padded vocabulary", vocab)):
      if size % tensor:
        raise ValueError(
            f"sampler mesh tensor={tensor} does not divide the model's {name} ({size})"
        )
    grid = np.asarray([by_host[p][: data * tensor] for p in sorted(by_host)], dtype=object)
    grid = grid.reshape(len(by_host), data, 1, tensor, 1)
    publish = Mesh(grid, _PUBLISH_AXES, axis_types=(AxisType.Auto,) * len(_PUBLISH_AXES))
    return cls(model_config, data, tensor, publish)

  @property
  def num_replicas(self) -> int:
    return self.data

  def replica_shardings(self, replica: int):
    return M.param_shardings(self.model_config, self.replicas[replica])

  def publish(self, params) -> list[Any]:
    """The trainer's params (any layout over the trainer's mesh) -> one param tree per local engine
    replica, on that replica's devices, in the compute dtype. A collective: every process calls it at the
    same step. The result shares no buffer with `params` (the train step may donate them)."""
    trainer_devices = _device_order(params)
    if trainer_devices == tuple(self.publish_mesh.devices.flat):
      return self._publish_by_resharding(params)
    return self._publish_by_replicating(params)

  def _publish_by_resharding(self, params) -> list[Any]:
    out = self._reshard(params)
    trees = []
    for r in range(self.data):

      def assemble(x, sharding):
        mine = set(sharding.device_set)
        shards = [s.data for s in x.addressable_shards if s.device in mine]
        return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)

      trees.append(jax.tree.map(assemble, out, self.replica_shardings(r)))
    return trees

  def _publish_by_replicating(self, params) -> list[Any]:
    mesh = getattr(jax.tree.leaves(params)[0].sharding, "mesh", None)
    if mesh is None:  # plain single-device arrays
      params = _copy(params, self.model_config.compute_dtype)
    elif mesh not in self._replicate:
      replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
      self._replicate[mesh] = jax.jit(
          functools.partial(_copy, dtype=self.model_config.compute_dtype),
          out_shardings=jax.tree.map(lambda _: replicated, params),
      )
    if mesh is not None:
      params = self._replicate[mesh](params)
    local = jax.tree.map(lambda x: x.addressable_shards[0].data, params)
    return [jax.device_put(local, self.replica_shardings(r)) for r in range(self.data)]


def _copy(tree, dtype):
  """A copy in the sampler's dtype (the engine computes in it; half the bytes to move for bfloat16)."""
  return jax.tree.map(lambda x: jnp.copy(x).astype(dtype), tree)


def _device_order(params) -> tuple:
  """The flat device order of the params' mesh (jit needs every sharding of a call in one order)."""
  orders = {
      tuple(x.sharding.mesh.devices.flat) if hasattr(x.sharding, "mesh") else ()
      for x in jax.tree.leaves(params)
  }
  return orders.pop() if len(orders) == 1 else ()


def layout_from_config(model_config: M.ModelConfig, mesh_fields: Sequence[tuple[str, int]]):
  """SamplerLayout from a config's `{data, tensor}` dict items (absent sizes are 1)."""
  fields = dict(mesh_fields)
  unknown = sorted(set(fields) - {"data", "tensor"})
  if unknown:
    raise ValueError(f"sampler mesh: unknown axes {unknown}; expected data and/or tensor")
  return SamplerLayout.create(
      model_config, int(fields.get("data", 1)), int(fields.get("tensor", 1))
  )
