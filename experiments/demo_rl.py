"""Demo RL margin: held-out task success of the demo SFT model before and after demo RL, over seeds.

    python experiments/demo_rl.py --sft_workdir=/tmp/demo --workdir=/tmp/demo_rl_runs --seeds=0,1,2 \
        [--num_steps=8] [--eval_tasks_per_family=8] [--eval_samples=4]

Success = the fraction of sampled episodes (the demo pipeline's evaluation temperature,
pipeline.eval.temperature, and the rollout limits of configs/demo_rl.py) whose answer the family's grader
scores 1, over `eval_tasks_per_family` val-split instances of each family, `eval_samples`
episodes each, through the same rollout pool RL trains with. Each seed runs RL from the same SFT weights
(rl.init_from_sft) with its own task order and sampling seeds, then is evaluated; the margin is the mean
over seeds of (after - before), with its standard error (sample std over seeds / sqrt(seeds)), overall
and per family. Prints one JSON line per evaluation and a final SUMMARY line.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app, flags

from biomni_jax.config_utils import load_config_file, parse_overrides

_SFT = flags.DEFINE_string("sft_workdir", None, "workdir of a configs/demo.py SFT run")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the RL runs go (one subdirectory per seed)")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "RL seeds")
_STEPS = flags.DEFINE_integer("num_steps", 8, "RL steps (rollout batches) per seed")
_EVAL_TASKS = flags.DEFINE_integer("eval_tasks_per_family", 8, "val instances per family")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", 4, "episodes per val instance")
_EVAL_FAMILIES = flags.DEFINE_list(
    "eval_families",
    [],
    "families evaluated (default: the demo pipeline's, pipeline.teacher.families)",
)
_OVERRIDES = flags.DEFINE_multi_string(
    "set", [], "extra config overrides key=value (python literals)"
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def demo_config(**overrides):
  return load_config_file(REPO / "configs" / "demo_rl.py", overrides)


def evaluate(
    config,
    params,
    model_cfg,
    tokenizer,
    families: list[str],
    tasks_per_family: int,
    samples: int,
    seed: int,
    temperature: float,
) -> dict:
  """Mean success / correctness / format of `samples` episodes on each val instance, via the rollout pool."""
  from biomni_jax.env.sandbox import SandboxPool
  from biomni_jax.rollout.pool import RolloutPool
  from biomni_jax.sampling import Engine
  from biomni_jax.sharding import ShardingRules, make_mesh
  from biomni_jax.train import rl, rl_metrics, rl_run

  eval_cfg = demo_config(
      **{
          "rl.task_split": "val",
          "rl.tasks_per_family": tasks_per_family,
          "rl.group_size": samples,
          "rl.temperature": temperature,
          "seed": seed,
      }
  )
  eval_cfg.rl.task_families = list(families)
  eval_cfg.rl.rollout = config.rl.rollout
  tasks = rl_run.build_tasks(eval_cfg)
  settings = rl.RLSettings.from_config(eval_cfg)
  rollout_cfg = rl_run.rollout_config(eval_cfg, settings)
  rollout_cfg = type(rollout_cfg)(**{**rollout_cfg.__dict__, "groups_per_batch": len(tasks)})
  sharding = ShardingRules(make_mesh())
  engine = Engine(
      model_cfg,
      params,
      sharding,
      num_slots=config.rl.engine.num_slots,
      max_len=config.rl.engine.max_len,
      detokenize=tokenizer.decode,
      max_prefill_chunk=config.rl.engine.max_prefill_chunk,
  )
  sandbox = SandboxPool(max_workers=config.rl.sandbox_workers)
  t0 = time.time()
  try:
    with RolloutPool(engine, sandbox, tokenizer, iter(tasks), rollout_cfg) as pool:
      groups = pool.get_groups(len(tasks))
  finally:
    engine.shutdown()
    sandbox.close()
  m = rl_metrics.episode_metrics(groups)
  return {
      "success": m["success"],
      "correctness": m["correctness"],
      "format": m["format"],
      "turns": m["turns"],
      "episodes": m["episodes"],
      "seconds": time.time() - t0,
      **{k: v for k, v in m.items() if k.startswith("success/")},
  }


def main(argv):
  del argv
  import numpy as np
  from biomni_jax.sharding import ShardingRules, make_mesh
  from biomni_jax.train import rl_run

  overrides = parse_overrides(_OVERRIDES.value)
  base = demo_config(
      **{
          "rl.init_from_sft": os.path.abspath(_SFT.value),
          "rl.num_steps": _STEPS.value,
          "rl.progress_bar": False,
          **overrides,
      }
  )
  model_cfg, sft_params, tokenizer, _ = rl_run.load_sft_run(
      base.rl.init_from_sft, ShardingRules(make_mesh())
  )
  pipeline = load_config_file(REPO / "configs" / "demo.py").pipeline
  families_evaluated = _EVAL_FAMILIES.value or list(pipeline.teacher.families)
  results = {"before": [], "after": [], "rl_seconds": []}
  families = {"before": [], "after": []}

  def held_out(params, seed):  # the same val episodes (sampling seed) before and after a seed's RL
    return evaluate(
        base,
        params,
        model_cfg,
        tokenizer,
        families_evaluated,
        _EVAL_TASKS.value,
        _EVAL_SAMPLES.value,
        1000 + seed,
        pipeline.eval.temperature,
    )

  for seed in [int(s) for s in _SEEDS.value]:
    before = held_out(sft_params, seed)
    print(json.dumps({"seed": seed, "when": "before", **before}), flush=True)
    config = demo_config(
        **{
            "rl.init_from_sft": base.rl.init_from_sft,
            "rl.num_steps": _STEPS.value,
            "rl.progress_bar": False,
            "seed": seed,
            **overrides,
        }
    )
    t0 = time.time()
    summary = rl_run.train_rl(config, os.path.join(_WORKDIR.value, f"seed{seed}"))
    results["rl_seconds"].append(time.time() - t0)
    after = held_out(summary["state"].params, seed)
    print(
        json.dumps({"seed": seed, "when": "after", "train_rewards": summary["rewards"], **after}),
        flush=True,
    )
    results["before"].append(before["success"])
    results["after"].append(after["success"])
    for when, m in (("before", before), ("after", after)):
      families[when].append(
          {k[len("success/") :]: v for k, v in m.items() if k.startswith("success/")}
      )
  margins = np.asarray(results["after"]) - np.asarray(results["before"])

  def mean_se(values):
    values = np.asarray(values, float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(float(values.mean()), 4), "se": round(float(se), 4)}

  per_family = {
      name: {
          "before": mean_se([f[name] for f in families["before"]]),
          "after": mean_se([f[name] for f in families["after"]]),
          "margin": mean_se(
              [a[name] - b[name] for a, b in zip(families["after"], families["before"])]
          ),
      }
      for name in families["before"][0]
  }
  print(
      "SUMMARY "
      + json.dumps(
          {
              "seeds": _SEEDS.value,
              "before": results["before"],
              "after": results["after"],
              "margin_mean": float(margins.mean()),
              "margin_std": float(margins.std()),
              "margin_se": mean_se(margins)["se"],
              "before_mean": mean_se(results["before"]),
              "after_mean": mean_se(results["after"]),
              "families": per_family,
              "rl_seconds": results["rl_seconds"],
          }
      )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["sft_workdir", "workdir"])
  app.run(main)
