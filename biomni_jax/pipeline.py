"""mode=pipeline: the whole recipe in one command, resumable stage by stage.

    python -m biomni_jax.main --config=configs/demo.py --workdir=DIR

Stages (each writes its outputs, then DIR/stages/<stage>.json atomically; a stage with that marker is skipped
on a re-run, and the long stages resume from their own checkpoints when interrupted):

  teacher_data  best-of-n scripted-expert rollouts through the sandbox (data/rejection_sampling.py) on the
                train split (SFT data) and val split (held-out SFT loss) -> DIR/data/sft_{train,val}.jsonl
  pretrain      the base model in DIR/base (a Hugging Face directory with its tokenizer), as
                `pipeline.pretrain.base` says: "shipped" (default) copies the packaged demo base
                (biomni_jax/assets/demo_base, or `pipeline.pretrain.path`); "train" regenerates it
                (train/base_model.py: a copy curriculum, then the teacher data's task prompts and tool
                outputs, never an assistant turn; the embedded tokenizer trained in DIR/pretrain);
                "none" skips it. A real run's base is a pretrained Qwen3 (model.init_from); the demo's
                tiny model needs this stand-in to copy an id from a tool output at all.
  sft           train/sft.py in DIR/sft, from DIR/base and its tokenizer (with "none": a random init
                and the embedded tokenizer trained in DIR/sft), on the teacher data mixed with
                `pipeline.sft_copy_examples` copy examples (DIR/data/sft_train_with_copy.jsonl)
  eval_base     the base model (DIR/base, or SFT's random initial params), held-out embedded tasks -> DIR/eval/base/
  eval_sft      the SFT model                                                       -> DIR/eval/sft/
  rl            train/rl.py in DIR/rl, initialised from DIR/sft
  eval_rl       the RL model                                                        -> DIR/eval/rl/
  report        DIR/eval.json (per task: base, sft, rl) and DIR/report.html

Evaluation: `pipeline.eval.tasks_per_family` val instances of each family the teacher data covers
(`pipeline.teacher.families`; RL trains on some or all of them, `rl.task_families`), `pipeline.eval.samples`
episodes each, sampled at `pipeline.eval.temperature` with the RL rollout's limits and the same seeds for
all three models; score = the family's official grade. Config sections: everything configs/demo.py has for SFT, plus `rl`
(the RL stage; configs/demo_rl.py runs it alone), `rl_optimizer`, and `pipeline` (teacher, pretrain, eval,
sft_overrides, sft_copy_examples).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import ml_collections

from biomni_jax.config_utils import ConfigError, field

STAGES = ("teacher_data", "pretrain", "sft", "eval_base", "eval_sft", "rl", "eval_rl", "report")
SYSTEMS = ("base", "sft", "rl")  # the eval stages' names, in table order


def progress(message: str) -> None:
  print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json_atomic(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _plain(config) -> ml_collections.ConfigDict:
  """An unlocked deep copy."""
  return ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else dict(config))


# --------------------------------------------------------------------------------------------- stage configs


def _trainer_config(config) -> ml_collections.ConfigDict:
  """The pipeline config as a mode=sft config (train/sft.py): without its rl and pipeline sections."""
  c = _plain(config)
  for section in ("rl", "rl_optimizer", "pipeline"):
    if section in c:
      del c[section]
  c.mode = "sft"
  return c


def sft_config(config, workdir: str) -> ml_collections.ConfigDict:
  """The SFT run's config: the pipeline config without its rl/pipeline sections, on the teacher data, with
  `pipeline.sft_overrides` (fields of section `sft`) applied."""
  c = _trainer_config(config)
  for key, value in dict(field(config, "pipeline.sft_overrides", default={}) or {}).items():
    if key not in c.sft:
      raise ConfigError(
          f"config field 'pipeline.sft_overrides.{key}': not a field of section 'sft'"
      )
    c.sft[key] = value
  c.data.train_path = sft_train_path(config, workdir)
  c.data.eval_path = os.path.join(workdir, "data", "sft_val.jsonl")
  if base_source(config) != "none":  # start from the base: its weights, tokenizer and vocabulary
    base = os.path.join(workdir, BASE_DIR)
    if not os.path.isfile(os.path.join(base, "config.json")):
      raise RuntimeError(
          f"sft: the base model {base!r} is missing; the pretrain stage writes it (delete "
          f"{marker_path(workdir, 'pretrain')} to run that stage again)"
      )
    with open(os.path.join(base, "config.json")) as f:
      vocab_size = int(json.load(f)["vocab_size"])
    c.model.init_from = c.tokenizer.path = base
    c.model.overrides = dict(c.model.get("overrides") or {}, vocab_size=vocab_size)
  return c


def sft_copy_examples(config) -> list[list[int]]:
  """`pipeline.sft_copy_examples`: [length, count] pairs of copy examples mixed into the SFT data."""
  pairs = [list(p) for p in field(config, "pipeline.sft_copy_examples", default=[]) or []]
  if not all(len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p) for p in pairs):
    raise ConfigError(
        f"config field 'pipeline.sft_copy_examples': expected [length, count] pairs of positive "
        f"integers, found {pairs}"
    )
  if any(length < 8 for length, _ in pairs):
    raise ConfigError(
        f"config field 'pipeline.sft_copy_examples': a copy example needs at least 8 tokens, "
        f"found {pairs}"
    )
  return pairs


def sft_train_path(config, workdir: str) -> str:
  """The SFT training file: the teacher data, or with copy examples the mix stage_sft writes."""
  name = "sft_train_with_copy.jsonl" if sft_copy_examples(config) else "sft_train.jsonl"
  return os.path.join(workdir, "data", name)


BASE_DIR = "base"
BASE_SOURCES = ("shipped", "train", "none")


def base_source(config) -> str:
  """`pipeline.pretrain.base`: where DIR/base comes from (module docstring)."""
  return field(config, "pipeline.pretrain.base", str, default="none", choices=BASE_SOURCES)


def shipped_base_path(config) -> str:
  """`pipeline.pretrain.path`, or the demo base packaged with biomni_jax."""
  from biomni_jax.train.base_model import DEMO_BASE

  return field(config, "pipeline.pretrain.path", str, default="") or DEMO_BASE


def rl_config(config, workdir: str) -> ml_collections.ConfigDict:
  """The RL run's config: model/tokenizer from the SFT run, section `rl`, optimizer = `rl_optimizer`."""
  c = ml_collections.ConfigDict()
  c.mode = "rl"
  c.seed = field(config, "seed", int, default=0)
  c.model = _plain(field(config, "model"))
  c.tokenizer = _plain(field(config, "tokenizer"))
  c.rl = _plain(field(config, "rl"))
  c.rl.init_from_sft = os.path.join(workdir, "sft")
  c.optimizer = _plain(field(config, "rl_optimizer"))
  c.mesh = _plain(field(config, "mesh"))
  return c


def eval_settings(config):
  """harness.ModelEvalSettings from the RL rollout/engine settings and pipeline.eval."""
  from biomni_jax.eval.harness import ModelEvalSettings

  r, e = field(config, "rl.rollout"), field(config, "rl.engine")
  return ModelEvalSettings(
      temperature=float(field(config, "pipeline.eval.temperature", (int, float), minimum=0)),
      top_p=float(r.top_p),
      max_turns=int(r.max_turns),
      max_context_tokens=int(r.max_context_tokens),
      max_new_tokens_per_turn=int(r.max_new_tokens_per_turn),
      use_system_prompt=bool(r.use_system_prompt),
      tool_timeout_s=float(r.tool_timeout_s),
      max_concurrent_episodes=int(r.max_concurrent_episodes),
      num_slots=int(e.num_slots),
      max_len=int(e.max_len),
      max_prefill_chunk=int(e.max_prefill_chunk),
      sandbox_workers=field(config, "rl.sandbox_workers", int, default=2),
      seed=field(config, "pipeline.eval.seed", int, default=1000),
      mesh_data=field(config, "rl.engine.mesh.data", int, default=1),
      mesh_tensor=field(config, "rl.engine.mesh.tensor", int, default=1),
  )


# --------------------------------------------------------------------------------------------- stages


def stage_teacher_data(config, workdir: str) -> dict:
  """Rejection sampling on train and val; the SFT files keep or drop the system prompt (pipeline.teacher)."""
  from biomni_jax.data.rejection_sampling import answer_hiding_pool, generate_sft_data
  from biomni_jax.data.teachers import make_teacher_factory
  from biomni_jax.data.trajectory import read_jsonl, write_jsonl

  t = field(config, "pipeline.teacher")
  families = list(field(config, "pipeline.teacher.families"))
  data_dir = os.path.join(workdir, "data")
  factory = make_teacher_factory(
      field(config, "pipeline.teacher.kind", str, default="scripted"),
      **dict(field(config, "pipeline.teacher.options", default={}) or {}),
  )
  keep_system = field(config, "pipeline.teacher.system_prompt", bool, default=False)
  out = {}
  with answer_hiding_pool(
      field(config, "pipeline.teacher.workers", int, minimum=1, default=2),
      out_path=os.path.join(data_dir, "x"),
  ) as pool:
    for split, count in (("train", int(t.train_per_family)), ("val", int(t.val_per_family))):
      raw = os.path.join(data_dir, f"teacher_{split}.jsonl")
      progress(
          f"teacher_data: {split}: best of {t.n_samples} teacher rollouts x {count} tasks x {len(families)} "
          f"families"
      )
      summary = generate_sft_data(
          families,
          split,
          count,
          int(t.n_samples),
          factory,
          raw,
          pool,
          max_turns=int(t.max_turns),
          min_reward=float(t.min_reward),
          progress=True,
      )
      kept = read_jsonl(raw)
      if not keep_system:
        for trajectory in kept:
          trajectory.messages = [m for m in trajectory.messages if m["role"] != "system"]
      write_jsonl(os.path.join(data_dir, f"sft_{split}.jsonl"), kept)
      out[split] = {
          "tasks": summary.tasks,
          "kept": summary.kept,
          "kept_fraction": summary.kept_fraction,
          "mean_candidate_reward": summary.mean_candidate_reward,
      }
  if not out["train"]["kept"]:
    raise RuntimeError(
        f"teacher_data: no training trajectory kept (min_reward {t.min_reward}); see "
        f"{data_dir}/teacher_train.jsonl.tasks.jsonl"
    )
  return out


def stage_pretrain(config, workdir: str) -> dict:
  """DIR/base from the packaged demo base ("shipped") or from the curriculum ("train")."""
  source, base = base_source(config), os.path.join(workdir, BASE_DIR)
  if source == "none":
    return {"skipped": "pipeline.pretrain.base = 'none'"}
  from biomni_jax.train import base_model

  if source == "shipped":
    path = shipped_base_path(config)
    progress(f"pretrain: the shipped base {path}")
    return base_model.copy_base(path, base)
  from biomni_jax.data.documents import environment_documents
  from biomni_jax.data.tokenizer import train_embedded_tokenizer
  from biomni_jax.data.trajectory import read_jsonl
  from biomni_jax.train.sft import TOKENIZER_DIR, tokenizer_corpus

  data_dir, run_dir = os.path.join(workdir, "data"), os.path.join(workdir, "pretrain")
  trajectories = {
      split: read_jsonl(os.path.join(data_dir, f"sft_{split}.jsonl")) for split in ("train", "val")
  }
  tokenizer_dir = os.path.join(run_dir, TOKENIZER_DIR)
  if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
    # The vocabulary covers the protocol's text too (the tokenizer is not the model's knowledge).
    train_embedded_tokenizer(
        tokenizer_corpus(trajectories["train"]),
        field(config, "tokenizer.vocab_size", int, minimum=512),
        tokenizer_dir,
    )
  documents = {split: environment_documents(ts) for split, ts in trajectories.items()}
  progress(
      f"pretrain: the base model's curriculum (copy rows, then {len(documents['train'])} "
      f"documents: task prompts and tool outputs, no assistant turns)"
  )
  summary = base_model.train_base(config, run_dir, documents["train"], documents["val"], base)
  return {**summary, "documents": {split: len(d) for split, d in documents.items()}, "base": base}


def write_sft_mix(config, workdir: str) -> int:
  """DIR/data/sft_train_with_copy.jsonl: the teacher trajectories, then the copy examples (the SFT run
  shuffles them), written atomically and the same on every run. Returns the number of copy examples.
  """
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.data.trajectory import read_jsonl, write_jsonl
  from biomni_jax.train.base_model import sft_copy_trajectories

  data_dir = os.path.join(workdir, "data")
  copies = sft_copy_trajectories(
      load_tokenizer(os.path.join(workdir, BASE_DIR)),
      sft_copy_examples(config),
      field(config, "seed", int, default=0),
  )
  teacher = read_jsonl(os.path.join(data_dir, "sft_train.jsonl"))
  write_jsonl(sft_train_path(config, workdir), teacher + copies)
  return len(copies)


def stage_sft(config, workdir: str) -> dict:
  from biomni_jax.train.sft import train_sft

  copies = write_sft_mix(config, workdir) if sft_copy_examples(config) else 0
  summary = train_sft(sft_config(config, workdir), os.path.join(workdir, "sft"))
  losses = summary["losses"]
  return {
      "steps": summary["final_step"],
      "last_loss": losses[max(losses)] if losses else None,
      "eval_loss": summary.get("eval_loss"),
      "rows": summary["rows"],
      "num_params": summary["num_params"],
      "copy_examples": copies,
  }


def stage_rl(config, workdir: str) -> dict:
  from biomni_jax.train.rl_run import train_rl

  summary = train_rl(rl_config(config, workdir), os.path.join(workdir, "rl"))
  return {
      "optimizer_steps": summary["final_step"],
      "rewards": {str(k): v for k, v in summary["rewards"].items()},
      "success": {str(k): v for k, v in summary["success"].items()},
  }


def base_agent(workdir: str):
  """The base model (DIR/base) if the pretrain stage wrote one, else the SFT run's initial params (init_train_state
  with its seed), with its model config and tokenizer."""
  from biomni_jax.eval.agents import ModelAgent, load_hf_agent, load_run_agent

  if os.path.isfile(os.path.join(workdir, BASE_DIR, "config.json")):
    return load_hf_agent(os.path.join(workdir, BASE_DIR))
  from biomni_jax.sharding import ShardingRules, make_mesh
  from biomni_jax.train.optimizer import make_optimizer
  from biomni_jax.train.step import init_train_state

  trained = load_run_agent(os.path.join(workdir, "sft"))
  with open(os.path.join(workdir, "sft", "config.json")) as f:
    sft = json.load(f)
  opt = dict(
      sft["optimizer"], total_steps=max(int(sft["optimizer"].get("warmup_steps") or 0) + 1, 2)
  )
  state = init_train_state(
      trained.model_config, make_optimizer(opt), int(sft.get("seed", 0)), ShardingRules(make_mesh())
  )
  return ModelAgent(trained.model_config, state.params, trained.tokenizer, "init")


def stage_eval(system: str) -> Callable[[Any, str], dict]:
  def run(config, workdir: str) -> dict:
    from biomni_jax.eval import harness
    from biomni_jax.eval.agents import load_run_agent
    from biomni_jax.eval.tasks import load_embedded

    families = list(field(config, "pipeline.teacher.families"))
    instances, envs = load_embedded(
        families,
        field(config, "pipeline.eval.split", str, default="val"),
        field(config, "pipeline.eval.tasks_per_family", int, minimum=1),
        seed=field(config, "rl.task_seed", int, default=0),
    )
    samples = field(config, "pipeline.eval.samples", int, minimum=1)
    agent = (
        base_agent(workdir) if system == "base" else load_run_agent(os.path.join(workdir, system))
    )
    progress(
        f"eval_{system}: {len(instances)} held-out instances x {samples} episodes ({agent.source})"
    )
    records = harness.run_model(agent, instances, envs, samples, eval_settings(config))
    out_dir = os.path.join(workdir, "eval", system)
    harness.write_records(records, os.path.join(out_dir, "trajectories.jsonl"))
    summary = harness.summarize(records, ks=sorted({1, samples}), task_order=families)
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    progress(
        f"eval_{system}: average success {summary['average']:.3f} "
        + " ".join(f"{t}={e['mean']:.2f}" for t, e in summary["tasks"].items())
    )
    return {"average": summary["average"]}

  return run


def eval_table(workdir: str) -> dict:
  """eval.json's content: per task {base, sft, rl} mean success (+ pass@k), and the averages."""
  summaries = {}
  for system in SYSTEMS:
    with open(os.path.join(workdir, "eval", system, "summary.json")) as f:
      summaries[system] = json.load(f)
  tasks = {}
  for system, s in summaries.items():
    for task, entry in s["tasks"].items():
      row = tasks.setdefault(task, {})
      row[system] = entry["mean"]
      for key, value in entry.items():
        if key.startswith("pass@"):
          row[f"{system}_{key}"] = value
  return {
      "tasks": tasks,
      "average": {system: s["average"] for system, s in summaries.items()},
      "episodes": {system: s["episodes"] for system, s in summaries.items()},
  }


def stage_report(config, workdir: str) -> dict:
  from biomni_jax.eval import table
  from biomni_jax.report import write_report

  result = eval_table(workdir)
  result["stage_seconds"] = {
      name: read_marker(workdir, name).get("seconds") for name in STAGES[:-1]
  }
  write_json_atomic(os.path.join(workdir, "eval.json"), result)
  path = write_report(workdir)
  scores = {
      system: {t: row[system] for t, row in result["tasks"].items() if system in row}
      for system in SYSTEMS
  }
  print(table.format_table(scores, list(field(config, "pipeline.teacher.families"))), flush=True)
  return {"report": path, "average": result["average"]}


STAGE_FUNCTIONS: dict[str, Callable[[Any, str], dict]] = {
    "teacher_data": stage_teacher_data,
    "pretrain": stage_pretrain,
    "sft": stage_sft,
    "eval_base": stage_eval("base"),
    "eval_sft": stage_eval("sft"),
    "rl": stage_rl,
    "eval_rl": stage_eval("rl"),
    "report": stage_report,
}


# --------------------------------------------------------------------------------------------- the driver


def marker_path(workdir: str, stage: str) -> str:
  return os.path.join(workdir, "stages", f"{stage}.json")


def read_marker(workdir: str, stage: str) -> dict:
  path = marker_path(workdir, stage)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def check_config(config) -> None:
  for section in ("rl", "rl_optimizer", "pipeline.teacher", "pipeline.eval"):
    field(config, section)  # a missing section raises ConfigError naming it
  taught = field(config, "pipeline.teacher.families")
  unknown = set(taught) - set(_family_names())
  if unknown:
    raise ConfigError(
        f"config field 'pipeline.teacher.families': unknown {sorted(unknown)}; expected some of "
        f"{_family_names()}"
    )
  if sft_copy_examples(config) and base_source(config) == "none":
    raise ConfigError(
        "config field 'pipeline.sft_copy_examples': copy examples need the base's tokenizer; with "
        "pipeline.pretrain.base = 'none' set it to []"
    )
  untaught = set(field(config, "rl.task_families")) - set(taught)
  if untaught:  # RL from an SFT model that never saw the family's protocol has nothing to improve
    raise ConfigError(
        f"config field 'rl.task_families': {sorted(untaught)} not in pipeline.teacher.families "
        f"{list(taught)}"
    )


def _family_names() -> list[str]:
  from biomni_jax.env.tasks import family_names

  return family_names()


def run_pipeline(config, workdir: str) -> dict:
  """Run the stages not yet done (see the module docstring); returns eval.json's content plus timings."""
  check_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  start = time.monotonic()
  timings = {}
  for i, stage in enumerate(STAGES, start=1):
    done = read_marker(workdir, stage)
    if done:
      progress(
          f"stage {i}/{len(STAGES)} {stage}: done in an earlier run ({done.get('seconds', 0):.0f} s); skipped"
      )
      continue
    progress(f"stage {i}/{len(STAGES)} {stage}: starting")
    t0 = time.monotonic()
    summary = STAGE_FUNCTIONS[stage](config, workdir)
    timings[stage] = time.monotonic() - t0
    write_json_atomic(marker_path(workdir, stage), {"seconds": timings[stage], "summary": summary})
    progress(f"stage {i}/{len(STAGES)} {stage}: done in {timings[stage]:.0f} s")
  with open(os.path.join(workdir, "eval.json")) as f:
    result = json.load(f)
  progress(
      f"finished in {time.monotonic() - start:.0f} s: {os.path.join(workdir, 'eval.json')}, "
      f"{os.path.join(workdir, 'report.html')}"
  )
  return {
      "average_base": result["average"]["base"],
      "average_sft": result["average"]["sft"],
      "average_rl": result["average"]["rl"],
      "wall_seconds": time.monotonic() - start,
      "report": os.path.join(workdir, "report.html"),
  }
