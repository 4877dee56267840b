"""RL end to end (real engine, rollout pool, sandbox and trainer) on simulated devices or processes.

Run by tests/train/test_rl_meshes.py, as one process with N simulated CPU devices or as each of two
`jax.distributed` processes. Prints one JSON line per RL step ("step" records: the groups this host fed,
their rows, the loss, a digest of every local engine replica's params and its version) and a final
"summary" line.

    python tests/train/rl_mesh_check.py --devices=4 --mesh=fsdp=4 --engine_mesh=data=2 --workdir=W
    python tests/train/rl_mesh_check.py --devices=2 --processes=2 --process_id=K --port=P ...
"""

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time


def parse_axes(text):
  return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(args):
  from biomni_jax.config_utils import load_config_file

  overrides = {
      "model.overrides.hidden_size": 32,
      "model.overrides.intermediate_size": 64,
      "model.overrides.num_hidden_layers": 2,
      "model.overrides.head_dim": 8,
      "model.overrides.attention_block_q": 32,
      "model.overrides.attention_block_kv": 32,
      "model.overrides.logits_chunk": 64,
      "tokenizer.vocab_size": 600,
      "rl.task_families": ["sequence_qa", "locus_causal_gene"],
      "rl.tasks_per_family": 8,
      "rl.num_groups": 4,
      "rl.group_size": 2,
      "rl.num_minibatches": 2,
      "rl.num_steps": args.steps,
      "rl.seq_len": 1024,
      "rl.logprob_batch_rows": 4,
      "rl.rollout.max_turns": 2,
      "rl.rollout.max_new_tokens_per_turn": 12,
      "rl.rollout.max_context_tokens": 900,
      "rl.rollout.max_concurrent_episodes": 8,
      "rl.engine.num_slots": 4,
      "rl.engine.max_len": 1024,
      "rl.engine.max_prefill_chunk": 128,
      "rl.sandbox_workers": 1,
      "rl.save_every": 1,
      "rl.async_checkpoint": False,
      "rl.tensorboard": False,
      "rl.progress_bar": False,
      "rl.temperature": 1.0,
      "optimizer.lr": 1e-3,
  }
  config = load_config_file(os.path.join(REPO, "configs", "demo_rl.py"), overrides)
  config.mesh = parse_axes(args.mesh)
  config.rl.engine.mesh = parse_axes(args.engine_mesh)
  config.rl.engine.release_during_train = bool(getattr(args, "release", False))
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--mesh", default="fsdp=-1")
  parser.add_argument("--engine_mesh", default="")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--release", action="store_true", help="rl.engine.release_during_train")
  parser.add_argument("--processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument(
      "--rows_out", default="", help="write every mini-batch's local rows here (.npz)"
  )
  parser.add_argument(
      "--die_at_step",
      type=int,
      default=0,
      help="process 1 exits hard right after publishing this step",
  )
  parser.add_argument(
      "--replay",
      default="",
      help="comma-separated .npz files of --rows_out: train one process on their rows, host by host",
  )
  args = parser.parse_args()

  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax

  if args.processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=args.processes,
        process_id=args.process_id,
        heartbeat_timeout_seconds=10,
    )
  import numpy as np

  sys.path.insert(0, REPO)
  from biomni_jax.train import rl, rl_batch, rl_run

  config = load_config(args)

  records = []
  current = {"step": 0}  # the RL step being trained (names the saved rows)
  saved_rows = {}
  build = rl_batch.build_minibatches

  def recording_build(groups, **kwargs):
    # A random tiny model never earns the task reward; give each trajectory a reward it can vary
    # (the fraction of its sampled ids that are even) so that advantages and the loss are not 0.
    for g in groups:
      for i, t in enumerate(g.trajectories):
        sampled = np.asarray(t.token_ids)[np.asarray(t.loss_mask) > 0]
        reward = float(np.mean(sampled % 2 == 0)) if sampled.size else 0.0
        g.trajectories[i] = dataclasses.replace(t, reward=reward)
    minibatches, adv = build(groups, **kwargs)
    records.append({"groups": sorted(g.instance_id for g in groups)})
    return minibatches, adv

  rl_batch.build_minibatches = recording_build
  train_on_groups = rl.RLTrainer.train_on_groups

  def recording_train(self, state, groups, rl_step):
    current["step"] = rl_step
    state, metrics = train_on_groups(self, state, groups, rl_step)
    records[-1].update(step=rl_step, loss=metrics["loss"], rows=metrics["rows"])
    return state, metrics

  rl.RLTrainer.train_on_groups = recording_train
  trainer_init = rl.RLTrainer.__init__

  def recording_init(self, *a, **kw):
    trainer_init(self, *a, **kw)
    step_fn = self.step_fn

    def recording_step(state, batch):
      state, metrics = step_fn(state, batch)
      records[-1].setdefault("minibatch_losses", []).append(float(metrics["loss"]))
      records[-1].setdefault("grad_norms", []).append(float(metrics["grad_norm"]))
      return state, metrics

    self.step_fn = recording_step

  rl.RLTrainer.__init__ = recording_init
  if args.replay:
    replay_rows(args, rl, rl_run, records)
    return
  pad = rl.pad_to_common_rows

  def recording_pad(minibatches):
    out = pad(minibatches)
    for k, rows in enumerate(out):
      for name, value in rows.items():
        saved_rows[f"step{current['step']}_mb{k}_{name}"] = value
    return out

  rl.pad_to_common_rows = recording_pad

  from biomni_jax.sampling import replicas

  publish = replicas.publish_to

  def recording_publish(engine, layout, params, version):
    publish(engine, layout, params, version)
    engines = engine.engines if isinstance(engine, replicas.EngineGroup) else [engine]
    digests = []
    for e in engines:
      deadline = time.monotonic() + 60
      while (
          e.version != version and time.monotonic() < deadline
      ):  # the swap runs in the engine thread
        time.sleep(0.01)
      h = hashlib.sha256()
      for leaf in jax.tree.leaves(e.params):
        h.update(np.asarray(leaf).tobytes())
      digests.append((e.version, h.hexdigest()))
    records[-1].update(version=version, digests=digests)
    if "releases" in engines[0].stats:
      records[-1]["releases"] = [e.stats["releases"] for e in engines]
    print(json.dumps({"kind": "step", "process": jax.process_index(), **records[-1]}), flush=True)
    if args.die_at_step and version == args.die_at_step and jax.process_index() == 1:
      os._exit(3)

  import biomni_jax.sampling

  biomni_jax.sampling.publish_to = recording_publish

  summary = rl_run.train_rl(config, args.workdir)
  if args.rows_out:
    np.savez(args.rows_out, **saved_rows)
  print(
      json.dumps(
          {
              "kind": "summary",
              "process": jax.process_index(),
              "final_step": summary["final_step"],
              "rewards": summary["rewards"],
          }
      ),
      flush=True,
  )


def replay_rows(args, rl, rl_run, records):
  """One process trains on the rows the hosts of a multi-host run saved (--rows_out), each global
  mini-batch being host 0's rows then host 1's, from the same initial state; prints step records."""
  import numpy as np

  saved = [dict(np.load(path)) for path in args.replay.split(",")]

  class ReplayPool:

    def restore_consumed(self, ids):
      pass

    def publish_version(self, version):
      pass

    def start(self):
      pass

    def stop(self):
      pass

  def replay_loop(run, state, pool, start_step):
    trainer = run.trainer
    for step in range(start_step + 1, run.total_steps + 1):
      records.append({"step": step})
      minibatches = []
      while f"step{step}_mb{len(minibatches)}_tokens" in saved[0]:
        k = len(minibatches)
        minibatches.append(
            {
                name: np.concatenate([host[f"step{step}_mb{k}_{name}"] for host in saved])
                for name in rl.STEP_FIELDS
                if name != "old_logprobs"
            }
        )
      # As train_on_groups: every old log-prob under the step's first params (and the reference's).
      trainer.add_logprobs(state.params, minibatches)
      for rows in minibatches:
        placed = {
            name: jax.device_put(rows[name], trainer.batch_sharding) for name in trainer.step_fields
        }
        state, _ = trainer.step_fn(state, placed)
      print(json.dumps({"kind": "replay", **records[-1]}), flush=True)
    return state, {"final_step": int(state.step), "rewards": {}}

  import jax

  rl_run.run_rl_loop = replay_loop
  rl_run.train_rl(load_config(args), args.workdir, pool_factory=lambda **_: ReplayPool())


if __name__ == "__main__":
  main()
