"""Checkpointer: exact roundtrip, keep-last-k, crash-safety, resharding on 8 CPU devices, clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import optax

from biomni_jax.train import checkpoint as ckpt_lib


def make_state(seed=0, step=7):
  k = jax.random.PRNGKey(seed)
  params = {
      "dense": {"kernel": jax.random.normal(k, (4, 6)), "bias": jnp.arange(6, dtype=jnp.float32)},
      "embed": jax.random.normal(jax.random.fold_in(k, 1), (10, 4)).astype(jnp.bfloat16),
  }
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
  return {
      "params": params,
      "opt_state": opt_state,
      "step": jnp.asarray(step, jnp.int32),
      "rng": jax.random.key(seed + 100),
  }


def assert_trees_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_is_exact_including_opt_state_types_rng_and_extra(tmp_path):
  state = make_state()
  extra = {"consumed_task_ids": ["gwas/3", "crispr/1"], "iterator": {"epoch": 1, "index": 42}}
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ck:
    assert ck.latest_step() is None
    assert ck.save(7, state, extra)
    ck.wait_until_finished()
    restored, got_extra = ck.restore(jax.eval_shape(lambda: state))
  assert_trees_equal(restored, state)
  assert got_extra == extra
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  # The restored key continues the same random stream.
  np.testing.assert_array_equal(
      jax.random.uniform(restored["rng"], (3,)), jax.random.uniform(state["rng"], (3,))
  )


def test_keep_last_k_latest_step_and_specific_step(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, max_to_keep=2, async_save=False)
  for step in (1, 2, 3):
    ck.save(step, make_state(seed=step, step=step), {"step": step})
  assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
  target = jax.eval_shape(lambda: make_state())
  state2, extra2 = ck.restore(target, step=2)
  assert extra2 == {"step": 2}
  assert_trees_equal(state2, make_state(seed=2, step=2))
  with pytest.raises(
      FileNotFoundError, match="no checkpoint at step 1 .*committed steps: \\[2, 3\\]"
  ):
    ck.restore(target, step=1)
  ck.close()
  # A fresh process-level view of the same directory sees the same steps.
  assert ckpt_lib.Checkpointer(tmp_path).all_steps() == [2, 3]


def test_save_interval_skips_unless_forced(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, save_interval_steps=5, async_save=False)
  assert ck.save(5, make_state(), {})
  assert not ck.save(6, make_state(), {})
  assert ck.save(7, make_state(), {}, force=True)
  assert ck.all_steps() == [5, 7]
  ck.close()


def test_restore_errors_name_the_problem(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path / "a", async_save=False)
  target = jax.eval_shape(lambda: make_state())
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    ck.restore(target)
  ck.save(1, make_state(), {})
  wrong = jax.eval_shape(lambda: make_state())
  wrong["params"]["dense"]["kernel"] = jax.ShapeDtypeStruct((5, 6), jnp.float32)
  wrong["params"]["new_layer"] = jax.ShapeDtypeStruct((2,), jnp.float32)
  with pytest.raises(
      ValueError,
      match=r"does not match the restore target: missing in checkpoint: "
      r"\['params/new_layer'\].*params/dense/kernel: stored \(4, 6\)",
  ):
    ck.restore(wrong)
  with pytest.raises(ValueError, match="not JSON-serializable"):
    ck.save(2, make_state(), {"bad": object()})
  ck.close()
  # A directory whose step holds something else entirely.
  other = tmp_path / "b"
  (other / "3" / "default").mkdir(parents=True)
  (other / "3" / "default" / "weights.npy").write_bytes(b"not orbax")
  (other / "notes.txt").write_text("hello")
  ck_other = ckpt_lib.Checkpointer(other)
  assert ck_other.latest_step() == 3
  with pytest.raises(
      ValueError,
      match=r"b/3 is not a checkpoint of this layout: expected items "
      r"\['extra', 'state'\], found entries \['default'\]",
  ):
    ck_other.restore(target)
  # Right item names, but no content.
  (tmp_path / "c" / "4" / "state").mkdir(parents=True)
  (tmp_path / "c" / "4" / "extra").mkdir()
  with pytest.raises(ValueError, match="c/4: item 'state' has no readable metadata"):
    ckpt_lib.Checkpointer(tmp_path / "c").restore(target)
  (tmp_path / "file").write_text("x")
  with pytest.raises(NotADirectoryError, match="is not a directory"):
    ckpt_lib.Checkpointer(tmp_path / "file")


CRASH_CHILD = textwrap.dedent(r"""
    import os, sys
    import jax, jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    import orbax.checkpoint as ocp
    from biomni_jax.train import checkpoint as ckpt_lib

    directory, mode = sys.argv[1], sys.argv[2]
    state = lambda v: {"w": jnp.full((64, 64), v, jnp.float32), "step": jnp.int32(v)}
    ck = ckpt_lib.Checkpointer(directory, async_save=(mode == "before_commit_async"))
    ck.save(1, state(1.0), {"step": 1})
    ck.wait_until_finished()

    def die(*args, **kwargs):
        os._exit(17)
    if mode.startswith("before_commit"):
        # Everything written, the crash hits just before the step directory is committed.
        atomicity.AtomicRenameTemporaryPath.finalize = die
        atomicity.CommitFileTemporaryPath.finalize = die
    else:
        # The crash hits while the items are being written.
        ocp.JsonCheckpointHandler.async_save = die
        ocp.JsonCheckpointHandler.save = die
    ck.save(2, state(2.0), {"step": 2})
    ck.wait_until_finished()
    print("save of step 2 was not interrupted")
    sys.exit(0)
""")


@pytest.mark.parametrize("mode", ["while_writing", "before_commit", "before_commit_async"])
def test_crash_mid_save_leaves_previous_checkpoint_restorable(tmp_path, mode):
  proc = subprocess.run(
      [sys.executable, "-c", CRASH_CHILD, str(tmp_path), mode],
      capture_output=True,
      text=True,
      timeout=240,
  )
  assert proc.returncode == 17, proc.stdout + proc.stderr[-3000:]
  ck = ckpt_lib.Checkpointer(tmp_path, async_save=False)
  assert ck.latest_step() == 1 and ck.all_steps() == [1]
  target = {
      "w": jax.ShapeDtypeStruct((64, 64), jnp.float32),
      "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  state, extra = ck.restore(target)
  assert extra == {"step": 1} and float(state["w"][0, 0]) == 1.0 and int(state["step"]) == 1
  # Saving the interrupted step again works.
  ck.save(2, {"w": jnp.full((64, 64), 2.0), "step": jnp.int32(2)}, {"step": 2})
  assert ck.all_steps() == [1, 2]
  ck.close()


RESHARD_CHILD = textwrap.dedent(r"""
    import os, sys
    import numpy as np
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    from biomni_jax.train import checkpoint as ckpt_lib

    assert jax.device_count() == 8, jax.devices()
    directory = sys.argv[1]
    mesh_a = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    mesh_b = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)
    w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    b = np.arange(8, dtype=np.float32)
    state = {"params": {"w": jax.device_put(w, NamedSharding(mesh_a, P("data", None))),
                        "b": jax.device_put(b, NamedSharding(mesh_a, P()))},
             "step": jnp.int32(3)}
    ck = ckpt_lib.Checkpointer(directory)
    ck.save(3, state, {"note": "resharded"})
    ck.wait_until_finished()

    target_shardings = {"params": {"w": NamedSharding(mesh_b, P("tensor", "fsdp")),
                                   "b": NamedSharding(mesh_b, P("tensor"))},
                        "step": NamedSharding(mesh_b, P())}
    target = ckpt_lib.abstract_state(state, target_shardings)
    restored, extra = ck.restore(target)
    for name, want in (("w", w), ("b", b)):
        got = restored["params"][name]
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.sharding == target_shardings["params"][name], (name, got.sharding)
    # Every device holds only its shard: w is split 4 x 2 into [4, 4] blocks.
    assert {s.data.shape for s in restored["params"]["w"].addressable_shards} == {(4, 4)}
    assert extra == {"note": "resharded"} and int(restored["step"]) == 3
    ck.close()
    print("RESHARD_OK")
""")


def test_restore_into_a_different_sharding_on_8_cpu_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", RESHARD_CHILD, str(tmp_path)],
      env=env,
      capture_output=True,
      text=True,
      timeout=240,
  )
  assert proc.returncode == 0 and "RESHARD_OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
