"""One system on one task set, graded and tabled: what `python -m biomni_jax.eval` and mode=eval run.

    instances, envs = load_instances(data, tasks, split, per_family, limit_per_task)
    records = play(agent, instances, envs, samples, settings, out_dir)   # agent: ORACLE or a ModelAgent
    summary = harness.summarize(records, ks, task_order)
    print(report_text(system, summary, ks, task_order, episodes_path))

mode=eval (`python -m biomni_jax.main --config=X --workdir=W --config.mode=eval`) reads the config's
`eval` section (configs/demo.py has one; every field has a default):

  model            "" = the run in W; else a run's workdir (SFT or RL: its newest checkpoint, or `step`), a
                   pipeline workdir (its RL run if that has a checkpoint, else its SFT run), a Hugging
                   Face Qwen3 directory, or "oracle" (answers with the ground truth: the harness's check)
  step             checkpoint step of a run workdir; -1 = the newest
  data             "" = the embedded families; "eval1_sample" = the 50 Eval1 rows in
                   biomni_jax/env/data/; or an Eval1 .parquet / .jsonl path
  tasks            comma-separated task names ("" = all of the data's)
  split, tasks_per_family, task_seed    embedded families: which instances
  limit_per_task   Eval1: at most this many rows per task (0 = all)
  samples          episodes per instance; pass_at_k: comma-separated k ("" = 1 and samples)
  and any field of harness.ModelEvalSettings (temperature, max_turns, num_slots, ...).

It writes W/eval_episodes.jsonl (every graded episode) and W/eval.json:
  {"system", "model", "data", "tasks": {task: {system: mean, "<system>_pass@k": ...}},
   "average": {system: mean over tasks}, "episodes": {system: count}, "details": harness summary,
   "eval": the config section}
(`tasks`, `average` and `episodes` in the layout of the pipeline's eval.json). An existing W/eval.json is
never replaced: the run stops before any work, and the file is claimed with a hard link, so a result
written meanwhile by another run is not overwritten either.

On a pod (`main --distributed`) every host runs the same command on its own sampler mesh (the eval
section's mesh_data x mesh_tensor of its devices), plays its share of the instances, and process 0
writes the gathered table (eval/harness.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax

from biomni_jax.config_utils import ConfigError, field
from biomni_jax.eval import harness, table
from biomni_jax.eval.agents import AgentLoadError, load_hf_agent, load_run_agent, oracle_factory
from biomni_jax.eval.tasks import (
    EMBEDDED,
    FLAG_NAMES,
    EvalInputError,
    InputNames,
    load_eval1,
    load_embedded,
)

ORACLE = "oracle"
RESULT_FILE = "eval.json"
EPISODES_FILE = "eval_episodes.jsonl"
CONFIG_NAMES = InputNames(
    data="config field 'eval.data'",
    tasks="config field 'eval.tasks'",
    per_family="config field 'eval.tasks_per_family'",
    split="config field 'eval.split'",
)


# ------------------------------------------------------------------------------------- shared steps


def load_instances(
    data: str,
    tasks: str,
    split: str = "val",
    per_family: int = 8,
    limit_per_task: int = 0,
    seed: int = 0,
    names: InputNames = FLAG_NAMES,
):
  """(instances, environments) of an Eval1 file (`data` set) or of the embedded families (`data` "").

  tasks: comma-separated names, "" for all; "embedded" names the embedded families explicitly.
  """
  selected = [t.strip() for t in tasks.split(",") if t.strip() and t.strip() != EMBEDDED]
  if data:
    if tasks.strip() == EMBEDDED:
      raise EvalInputError(
          f"{names.tasks}={EMBEDDED} and {names.data} both given; pass one (embedded tasks or an "
          f"Eval1 file)"
      )
    return load_eval1(data, selected, limit_per_task, names=names)
  return load_embedded(selected, split, per_family, seed=seed, names=names)


def parse_ks(text: str, samples: int, where: str) -> list[int]:
  """pass@k values from "1,4" ("" = 1 and samples); each k in 1..samples."""
  try:
    ks = {int(k) for k in text.split(",") if k.strip()}
  except ValueError:
    raise EvalInputError(f"{where}: expected comma-separated integers, found {text!r}") from None
  bad = sorted(k for k in ks if not 1 <= k <= samples)
  if bad:
    raise EvalInputError(f"{where}: expected values in 1..{samples} (the samples), found {bad}")
  return sorted(ks or {1, samples})


def play(
    agent: Any,
    instances,
    environments,
    samples: int,
    settings: harness.ModelEvalSettings,
    out_dir: str,
    progress: bool = True,
) -> list[harness.EpisodeRecord]:
  """`samples` graded episodes per instance by `agent`: ORACLE (text-level, through a sandbox pool that
  also hides out_dir) or an agents.ModelAgent (engine + rollout pool, sampled with `settings`)."""
  if agent == ORACLE:
    from biomni_jax.data.rejection_sampling import answer_hiding_pool

    workers = settings.sandbox_workers
    with answer_hiding_pool(workers, out_path=os.path.join(out_dir, "x")) as pool:
      return harness.run_text_agent(
          oracle_factory(),
          instances,
          environments,
          samples,
          pool,
          max_turns=settings.max_turns,
          workers=workers,
          progress=progress,
      )
  return harness.run_model(agent, instances, environments, samples, settings)


def report_text(
    system: str, summary: dict, ks: Sequence[int], task_order: Sequence[str], episodes_path: str
) -> str:
  """The paper's table for one system, the mean pass@k over tasks, and where the episodes are."""
  scores = {system: {t: e["mean"] for t, e in summary["tasks"].items()}}
  lines = [table.format_table(scores, task_order)]
  for k in ks:
    values = [e[f"pass@{k}"] for e in summary["tasks"].values() if f"pass@{k}" in e]
    if values:
      lines.append(f"pass@{k} (mean over tasks): {sum(values) / len(values):.3f}")
  lines.append(f"{summary['episodes']} episodes; trajectories: {episodes_path}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------- mode=eval

_SELECTION_DEFAULTS = {
    "model": "",
    "step": -1,
    "data": "",
    "tasks": "",
    "split": "val",
    "tasks_per_family": 8,
    "task_seed": 0,
    "limit_per_task": 0,
    "samples": 1,
    "pass_at_k": "",
}
_SETTINGS = {f.name: f.default for f in dataclasses.fields(harness.ModelEvalSettings)}


def _section(config) -> dict[str, Any]:
  """The `eval` section's values, typed and checked, with defaults for absent fields."""
  present = dict(field(config, "eval", default={}) or {})
  unknown = sorted(set(present) - set(_SELECTION_DEFAULTS) - set(_SETTINGS))
  if unknown:
    raise ConfigError(
        f"config field 'eval': unknown field(s) {unknown}; expected some of "
        f"{sorted(_SELECTION_DEFAULTS) + sorted(_SETTINGS)}"
    )
  values = {}
  for name, default in {**_SELECTION_DEFAULTS, **_SETTINGS}.items():
    kind = type(default)
    minimum = None
    if kind in (int, float) and name not in ("step", "seed", "task_seed"):
      minimum = 1 if name in ("samples", "tasks_per_family") else 0
      minimum = -1 if name.startswith("mesh_") else minimum  # -1: the rest of the host's devices
    values[name] = field(config, f"eval.{name}", kind, default=default, minimum=minimum)
  if values["step"] < -1:
    raise ConfigError(
        f"config field 'eval.step': expected -1 (newest) or >= 0, found {values['step']}"
    )
  return values


def _newest_step(run_dir: str) -> int | None:
  checkpoints = os.path.join(run_dir, "checkpoints")
  steps = (
      [int(p) for p in os.listdir(checkpoints) if p.isdigit()] if os.path.isdir(checkpoints) else []
  )
  return max(steps) if steps else None


def resolve_model(model: str, workdir: str) -> tuple[str, str]:
  """(kind, directory) of what eval.model names: kind "oracle", "run" (a biomni_jax SFT or RL workdir)
  or "hf" (a Hugging Face directory). A pipeline workdir resolves to its RL run, else its SFT run.
  """
  if model == ORACLE:
    return ORACLE, ""
  where = "config field 'eval.model'"
  path = os.path.abspath(model or workdir)
  if not os.path.isdir(path):
    raise ConfigError(f"{where}: {path!r} is not a directory")
  if os.path.isfile(os.path.join(path, "config.json")):
    if os.path.isdir(os.path.join(path, "checkpoints")):
      return "run", path
    if any(name.endswith(".safetensors") for name in os.listdir(path)):
      return "hf", path
    raise ConfigError(
        f"{where}: {path!r} has config.json but neither checkpoints/ (a biomni_jax run) nor "
        f"*.safetensors (a Hugging Face directory)"
    )
  runs = [
      os.path.join(path, s)
      for s in ("rl", "sft")
      if _newest_step(os.path.join(path, s)) is not None
  ]
  if runs:  # a pipeline workdir: the most trained model it holds
    return "run", runs[0]
  raise ConfigError(
      f"{where}: {path!r} holds no model; expected a biomni_jax run's workdir (config.json and "
      f"checkpoints/), a pipeline workdir (rl/ or sft/ with checkpoints), a Hugging Face Qwen3 "
      f"directory (config.json, *.safetensors, tokenizer.json), or 'oracle'"
      + ("" if model else " (eval.model is empty: the model is looked for in --workdir)")
  )


def _load_agent(kind: str, path: str, step: int):
  if kind == ORACLE:
    return ORACLE
  try:
    if kind == "hf":
      return load_hf_agent(path)
    return load_run_agent(path, None if step < 0 else step)
  except AgentLoadError as e:
    raise ConfigError(f"config field 'eval.model': {e}") from None
  except FileNotFoundError as e:  # a `step` without its checkpoint
    raise ConfigError(f"config field 'eval.step': no checkpoint {step} in {path!r} ({e})") from None


def _claim(tmp: str, final: str) -> None:
  """Move tmp to final unless final exists (then FileExistsError); atomic where hard links work."""
  try:
    os.link(tmp, final)
  except FileExistsError:
    os.unlink(tmp)
    raise FileExistsError(
        f"{final} appeared while this evaluation ran; its result is kept and this one dropped"
    ) from None
  except OSError:  # a filesystem without hard links
    if os.path.exists(final):
      os.unlink(tmp)
      raise FileExistsError(f"{final} exists; not replaced") from None
    os.replace(tmp, final)
    return
  os.unlink(tmp)


def _table_layout(system: str, summary: dict) -> dict[str, Any]:
  """The pipeline's eval.json layout for one system."""
  tasks = {}
  for task, entry in summary["tasks"].items():
    row = tasks[task] = {system: entry["mean"]}
    row.update({f"{system}_{k}": v for k, v in entry.items() if k.startswith("pass@")})
  return {
      "tasks": tasks,
      "average": {system: summary["average"]},
      "episodes": {system: summary["episodes"]},
  }


def run_eval_mode(config, workdir: str) -> dict[str, Any]:
  """mode=eval (see the module docstring); returns {system, model, average, episodes, result}."""
  values = _section(config)
  workdir = os.path.abspath(workdir)
  result_path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(result_path):
    raise FileExistsError(
        f"{result_path} exists (an earlier evaluation or pipeline result); it is never replaced: "
        f"pass another --workdir or move the file away"
    )
  settings = harness.ModelEvalSettings(**{name: values[name] for name in _SETTINGS})
  kind, model_dir = resolve_model(values["model"], workdir)
  try:
    instances, envs = load_instances(
        values["data"],
        values["tasks"],
        values["split"],
        values["tasks_per_family"],
        values["limit_per_task"],
        seed=values["task_seed"],
        names=CONFIG_NAMES,
    )
    ks = parse_ks(values["pass_at_k"], values["samples"], "config field 'eval.pass_at_k'")
  except EvalInputError as e:
    raise ConfigError(str(e)) from None
  agent = _load_agent(kind, model_dir, values["step"])
  system = ORACLE if kind == ORACLE else os.path.basename(os.path.normpath(model_dir))
  os.makedirs(workdir, exist_ok=True)
  records = play(agent, instances, envs, values["samples"], settings, workdir)
  task_order = [x.task_name for x in instances]
  summary = harness.summarize(records, ks, task_order)
  result = {
      "system": system,
      "model": ORACLE if kind == ORACLE else agent.source,
      "data": values["data"] or EMBEDDED,
      **_table_layout(system, summary),
      "details": summary,
      "eval": values,
  }
  episodes_path = os.path.join(workdir, EPISODES_FILE)
  summary_out = {
      "system": system,
      "model": result["model"],
      "average": summary["average"],
      "episodes": summary["episodes"],
      "result": result_path,
  }
  if jax.process_index() != 0:  # every host played its share and holds the gathered records
    return summary_out
  pending = f"{episodes_path}.pending{os.getpid()}"
  harness.write_records(records, pending)
  tmp = f"{result_path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=1)
  try:
    _claim(tmp, result_path)
  except FileExistsError:
    os.unlink(pending)
    raise
  os.replace(pending, episodes_path)
  print(report_text(system, summary, ks, task_order, episodes_path), flush=True)
  return summary_out
