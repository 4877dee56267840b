"""What crosses hosts in multi-controller JAX: one global SPMD trainer fed by one sampler per host.

Every process runs the same program. Host-local work (its rollout pool, sandbox and engine) runs at its
own pace; the functions here are the synchronisation points, and every process must call them in the
same order with the same shapes:

  allgather_json(value)          -> [value of process 0, value of process 1, ...]   (small host data)
  global_rows(rows, sharding)    -> this host's rows [R_local, ...] as its part of a global batch
                                    [P * R_local, ...] split over the batch axes of the trainer's mesh
  local_rows(array)              -> this host's rows of a batch-sharded global array, as numpy

With one process they reduce to the obvious single-host operations (no collective is issued).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

_LOST_PEER_MARKERS = (
    "Connection closed",
    "Connection reset",
    "Gloo",
    "heartbeat",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
)


class HostLost(RuntimeError):
  """A collective with the other processes failed: one of them died, hung up or lost its connection."""


def lost_host_error(exc: BaseException, where: str) -> BaseException:
  """`exc` as a HostLost naming `where` when several processes run and it reads as a failed collective
  (a peer's connection closed, a heartbeat or deadline missed); otherwise `exc` itself."""
  text = str(exc)
  if jax.process_count() == 1 or not any(m in text for m in _LOST_PEER_MARKERS):
    return exc
  return HostLost(
      f"{where}: a collective with the other {jax.process_count() - 1} process(es) failed, so one of "
      f"them died or lost its connection; this process stops too (restart every process to resume "
      f"from the last checkpoint). Cause: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
  )


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-able `value`, in process order. A collective: all processes must call it."""
  if jax.process_count() == 1:
    return [json.loads(json.dumps(value))]
  data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
  sizes = sizes.reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(gathered, sizes)]


def agree_max(value: int) -> int:
  """The largest `value` over all processes (e.g. the row count every host pads its batch to)."""
  return int(max(allgather_json(int(value))))


def check_batch_split(sharding: jax.sharding.NamedSharding, num_rows: int) -> None:
  """Raises ValueError unless a global batch of `num_rows` rows splits evenly over the processes, each
  process's rows on its own devices (what `global_rows` needs)."""
  count = jax.process_count()
  if count == 1:
    return
  if num_rows % count:
    raise ValueError(f"a global batch of {num_rows} rows does not split over {count} processes")
  owners = {}
  for device, index in sharding.devices_indices_map((num_rows, 1)).items():
    rows = index[0]
    owners.setdefault((rows.start or 0, rows.stop or num_rows), set()).add(device.process_index)
  if any(len(p) > 1 for p in owners.values()):
    raise ValueError(
        f"the trainer mesh {dict(sharding.mesh.shape)} places the same batch rows on several hosts; "
        f"multi-host RL needs the batch axes (data x fsdp) to split across hosts: make data * fsdp a "
        f"multiple of the {count} processes"
    )


def global_rows(
    rows: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
  """Each host's rows [R_local, ...] -> global arrays [P * R_local, ...] in `sharding` (process p's rows
  are rows p * R_local ... of the global batch). Every process must pass the same R_local."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in rows.items()
  }


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a global array whose leading axis is split over hosts (numpy)."""
  if jax.process_count() == 1:
    return np.asarray(array)
  local = multihost_utils.global_array_to_host_local_array(
      array, array.sharding.mesh, array.sharding.spec
  )
  return np.asarray(local)
