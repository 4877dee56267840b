"""Train-state checkpoints: a thin owner of an orbax ``CheckpointManager``.

A checkpoint at step k is the directory ``<dir>/<k>/`` with two items:

  state   the train-state pytree (params, opt_state, step, rng, ...), arrays saved
          with their shardings by ``StandardSave``; restored into the shardings of
          a caller-given abstract target (pytree of ``jax.ShapeDtypeStruct`` with
          ``sharding``), so a run can resume on a different mesh.
  extra   a JSON-able dict (data-iterator state, consumed task ids, config hash...).

Orbax writes a step into a temporary directory and renames it into place when
every item is written, so a step directory is complete or absent: a crash in
the middle of a save leaves the previous checkpoint as the latest one.
Old steps beyond ``max_to_keep`` are deleted after a newer one is committed.

Before restoring, the stored tree is compared with the target (paths, shapes,
dtypes) so a directory holding something else fails with an error that names
the directory, the step and the first differences, not deep inside tensorstore.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

STATE_ITEM = "state"
EXTRA_ITEM = "extra"
_MAX_LISTED = 8


def abstract_state(state: Any, shardings: Any = None) -> Any:
  """Pytree of ``jax.ShapeDtypeStruct`` like ``state``.

  Args:
    state: pytree of arrays (or of ShapeDtypeStructs).
    shardings: optional pytree of ``jax.sharding.Sharding`` with the structure of
      ``state`` (or a single Sharding for every leaf); defaults to each leaf's own.
  """
  if shardings is None:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), state)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def _path_str(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _stored_shape_dtype(leaf) -> tuple[tuple, str]:
  """(shape, dtype) as stored; typed PRNG keys are stored as their key data."""
  shape, dtype = tuple(leaf.shape), leaf.dtype
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
    shape, dtype = tuple(data.shape), data.dtype
  return shape, str(jax.numpy.dtype(dtype))


def _leaf_table(tree) -> dict[str, tuple[tuple, str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(path): _stored_shape_dtype(leaf) for path, leaf in leaves}


def describe_mismatch(stored: dict, wanted: dict) -> list[str]:
  """Human-readable differences between two {path: (shape, dtype)} tables."""
  problems = []
  missing = sorted(set(wanted) - set(stored))
  unexpected = sorted(set(stored) - set(wanted))
  if missing:
    problems.append(
        f"missing in checkpoint: {missing[:_MAX_LISTED]}"
        + (f" (+{len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else "")
    )
  if unexpected:
    problems.append(
        f"not in target: {unexpected[:_MAX_LISTED]}"
        + (f" (+{len(unexpected) - _MAX_LISTED} more)" if len(unexpected) > _MAX_LISTED else "")
    )
  differing = [
      f"{p}: stored {stored[p][0]} {stored[p][1]}, target {wanted[p][0]} {wanted[p][1]}"
      for p in sorted(set(stored) & set(wanted))
      if stored[p] != wanted[p]
  ]
  problems.extend(differing[:_MAX_LISTED])
  return problems


class Checkpointer:
  """Saves and restores (state pytree, extra JSON dict) per step under ``directory``.

  Args:
    directory: checkpoint root (created if absent); must not be a file.
    max_to_keep: newest steps kept; None keeps all.
    save_interval_steps: ``save`` skips steps not divisible by this unless ``force``.
    async_save: write in a background thread; ``save`` returns once arrays are
      copied off the device. Call ``wait_until_finished`` (``restore``/``close`` do).
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      max_to_keep: Optional[int] = 3,
      save_interval_steps: int = 1,
      async_save: bool = True,
  ):
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
      raise NotADirectoryError(f"checkpoint directory {directory} exists and is not a directory")
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={
            STATE_ITEM: ocp.StandardCheckpointHandler(),
            EXTRA_ITEM: ocp.JsonCheckpointHandler(),
        },
    )

  # ------------------------------------------------------------------ queries
  def latest_step(self) -> Optional[int]:
    """Newest committed step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Committed steps, ascending."""
    return sorted(self._manager.all_steps())

  # ------------------------------------------------------------------ save
  def save(
      self, step: int, state: Any, extra: Optional[dict] = None, *, force: bool = False
  ) -> bool:
    """Save ``state`` and ``extra`` as step ``step``; returns False when the interval skips it.

    Raises ValueError if ``extra`` is not JSON-serializable (checked eagerly, since an
    asynchronous save would otherwise fail later on another thread).
    """
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
      raise TypeError(f"Checkpointer.save: extra must be a dict, found {type(extra).__name__}")
    try:
      json.dumps(extra)
    except (TypeError, ValueError) as e:
      raise ValueError(
          f"Checkpointer.save: extra for step {step} is not JSON-serializable: {e}"
      ) from e
    return self._manager.save(
        int(step),
        force=force,
        args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave(state), EXTRA_ITEM: ocp.args.JsonSave(extra)}
        ),
    )

  def wait_until_finished(self) -> None:
    """Block until a pending asynchronous save is committed."""
    self._manager.wait_until_finished()

  # ------------------------------------------------------------------ restore
  def _check_layout(self, step: int, target: Any) -> None:
    where = f"{self.directory}/{step}"
    step_dir = os.path.join(self.directory, str(step))
    found_items = sorted(os.listdir(step_dir)) if os.path.isdir(step_dir) else []
    if STATE_ITEM not in found_items or EXTRA_ITEM not in found_items:
      raise ValueError(
          f"{where} is not a checkpoint of this layout: expected items "
          f"{[EXTRA_ITEM, STATE_ITEM]}, found entries {found_items}"
      )
    try:
      metadata = self._manager.item_metadata(step)[STATE_ITEM]
    except Exception as e:  # orbax raises assorted types for unreadable metadata
      raise ValueError(f"{where}: cannot read the metadata of item {STATE_ITEM!r}: {e}") from e
    if metadata is None:
      raise ValueError(f"{where}: item {STATE_ITEM!r} has no readable metadata")
    stored_tree = getattr(metadata, "tree", metadata)
    problems = describe_mismatch(_leaf_table(stored_tree), _leaf_table(target))
    if problems:
      raise ValueError(f"{where} does not match the restore target: " + "; ".join(problems))

  def restore(self, target: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Restore (state, extra) of ``step`` (default: latest) into ``target``'s structure.

    Args:
      target: pytree of ``jax.ShapeDtypeStruct`` (with ``sharding``) or of arrays, with
        the structure of the saved state (see ``abstract_state``). Arrays come back
        with the target's shardings and dtypes.
      step: a committed step; None means ``latest_step()``.
    Raises:
      FileNotFoundError: no checkpoint in the directory, or not at ``step``.
      ValueError: the directory/step holds something whose layout differs from ``target``.
    """
    self.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {self.directory} "
            f"(entries: {sorted(os.listdir(self.directory))[:_MAX_LISTED]})"
        )
    elif step not in self.all_steps():
      raise FileNotFoundError(
          f"no checkpoint at step {step} in {self.directory}; "
          f"committed steps: {self.all_steps()}"
      )
    target = abstract_state(target)
    self._check_layout(step, target)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(target), EXTRA_ITEM: ocp.args.JsonRestore()}
        ),
    )
    return restored[STATE_ITEM], dict(restored[EXTRA_ITEM] or {})

  # ------------------------------------------------------------------ lifetime
  def close(self) -> None:
    """Finish pending saves and release the manager's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
