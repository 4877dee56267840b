"""Evaluate checkpoints on Biomni-Eval1 and print them beside Biomni-R0's published numbers.

    # evaluate runs (the harness of biomni_jax.eval), then compare
    python experiments/compare_paper.py --data=biomni_eval1_dataset.parquet --out=/tmp/cmp \
        --checkpoint=sft8b=/ckpt/sft8b --checkpoint=rl8b=/ckpt/rl8b --hf=qwen3-8b=/models/Qwen3-8B
    # or compare evaluations already made with `python -m biomni_jax.eval --out=DIR`
    python experiments/compare_paper.py --results=rl8b=DIR [--results=DIR2/summary.json ...]

A result is an eval output directory, its summary.json ({"system", "tasks": {task: {"mean", ...}}, "average"},
written by `python -m biomni_jax.eval`) or its trajectories.jsonl (one graded episode a line: task_name,
instance_id, score, ...; summarized here). NAME= is optional (default: the summary's "system").

The table has one row per Eval1 task and one column per system: ours, then the paper's. Per task the best
system is marked '*' (ties mark all); "tasks won" counts the rows a system is best in (the paper reports 7 of
10 for Biomni-R0-32B). The published systems have per-task numbers only where the sources state them (below),
so they compete only in those rows; their "average" row is the published average, ours is the unweighted
mean over the tasks evaluated (with the count when fewer than all 10).

Published numbers (docs/recipe.md section 1.1): Biomni-R0-32B average 0.669, Biomni-R0-8B 0.588, the Qwen3 base
model about 0.35; rare disease diagnosis 0.67 (R0) vs 0.03 (base); GWAS variant prioritization 0.74 (R0) vs
0.16 (base); an independent re-run without the paid web-search tool: R0-32B 0.445, Qwen3-32B 0.221.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Optional, Sequence

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from biomni_jax.cli import asks_for_help, help_text, parse_flags  # noqa: E402
from biomni_jax.eval import table  # noqa: E402

EVAL1_TASKS = (
    "gwas_variant_prioritization",
    "screen_gene_retrieval",
    "lab_bench_seqqa",
    "patient_gene_detection",
    "gwas_causal_gene_pharmaprojects",
    "rare_disease_diagnosis",
    "crispr_delivery",
    "lab_bench_dbqa",
    "gwas_causal_gene_opentargets",
    "gwas_causal_gene_gwas_catalog",
)

# {system: ({task: score}, published average)}
PAPER: dict[str, tuple[dict[str, float], float]] = {
    "R0-32B (paper)": (
        {"rare_disease_diagnosis": 0.67, "gwas_variant_prioritization": 0.74},
        0.669,
    ),
    "R0-8B (paper)": ({}, 0.588),
    "Qwen3 base (paper)": (
        {"rare_disease_diagnosis": 0.03, "gwas_variant_prioritization": 0.16},
        0.35,
    ),
    "R0-32B (re-run)": ({}, 0.445),
    "Qwen3-32B (re-run)": ({}, 0.221),
}


class CompareError(ValueError):
  """A results path or a NAME=PATH argument that cannot be read; the message names it."""


def split_named(arg: str) -> tuple[Optional[str], str]:
  """'name=path' -> (name, path); 'path' -> (None, path)."""
  name, sep, path = arg.partition("=")
  return (name, path) if sep and name and not os.path.exists(arg) else (None, arg)


def read_result(path: str) -> tuple[str, dict[str, float]]:
  """(system name, {task: mean score}) from an eval output dir, its summary.json or its trajectories.jsonl."""
  if os.path.isdir(path):
    for name in ("summary.json", "trajectories.jsonl"):
      if os.path.isfile(os.path.join(path, name)):
        return read_result(os.path.join(path, name))
    raise CompareError(
        f"{path}: no summary.json or trajectories.jsonl (run python -m biomni_jax.eval --out={path})"
    )
  if not os.path.isfile(path):
    raise CompareError(f"{path}: no such file or directory")
  if path.endswith(".jsonl"):
    from biomni_jax.eval.harness import read_records, summarize

    try:
      summary = summarize(read_records(path))
    except (TypeError, ValueError, KeyError) as e:
      raise CompareError(f"{path}: not a trajectories.jsonl of graded episodes: {e}") from None
    system = os.path.basename(os.path.dirname(os.path.abspath(path)))
  else:
    try:
      with open(path) as f:
        summary = json.load(f)
      system = summary.get("system") or os.path.basename(os.path.dirname(os.path.abspath(path)))
      tasks = summary["tasks"]
    except (ValueError, KeyError, AttributeError) as e:
      raise CompareError(
          f"{path}: expected a summary.json with 'tasks': {{task: {{'mean': ...}}}}: {e!r}"
      ) from None
    summary = {"tasks": tasks}
  scores = {t: float(e["mean"]) for t, e in summary["tasks"].items()}
  unknown = sorted(set(scores) - set(EVAL1_TASKS))
  if unknown:
    print(
        f"note: {path}: tasks {unknown} are not Eval1 tasks; they are shown but have no paper numbers",
        file=sys.stderr,
    )
  return system, scores


def comparison(ours: Mapping[str, Mapping[str, float]]) -> tuple[list[str], list[list[str]], dict]:
  """(header, rows, data): task rows with '*' on the best, then average, tasks won. data is JSON-able."""
  scores = {**{k: dict(v) for k, v in ours.items()}, **{k: dict(v[0]) for k, v in PAPER.items()}}
  tasks = table.task_rows(scores, EVAL1_TASKS)
  header = ["task"] + list(scores)
  rows = []
  for task in tasks:
    best = set(table.winners(scores, task))
    rows.append(
        [task]
        + [
            "-" if task not in scores[s] else f"{scores[s][task]:.3f}{'*' if s in best else ''}"
            for s in scores
        ]
    )
  average = {s: (sum(v.values()) / len(v) if v else math.nan) for s, v in ours.items()}
  average.update({s: avg for s, (_, avg) in PAPER.items()})
  counts = {s: len(v) for s, v in ours.items()}
  rows.append(
      ["average"]
      + [
          f"{average[s]:.3f}"
          + (f" ({counts[s]} tasks)" if s in counts and counts[s] < len(EVAL1_TASKS) else "")
          for s in scores
      ]
  )
  won = table.tasks_won(scores, EVAL1_TASKS)
  rows.append(
      ["tasks won"] + [f"{won[s]}/{sum(1 for t in tasks if t in scores[s])}" for s in scores]
  )
  data = {"scores": scores, "average": average, "tasks_won": won}
  return header, rows, data


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = [
      "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
      for r in [header, *rows]
  ]
  rule = "-" * len(lines[0])
  return "\n".join([lines[0], rule, *lines[1:-2], rule, *lines[-2:]])


def evaluate(kind: str, name: str, path: str, args) -> str:
  """Runs `python -m biomni_jax.eval` for one checkpoint into args.out/name; returns that directory."""
  from biomni_jax.eval.__main__ import parse_args, run

  out = os.path.join(args.out, name)
  argv = [
      f"--{kind}={path}",
      f"--data={args.data}",
      f"--out={out}",
      f"--n_samples={args.n_samples}",
      f"--temperature={args.temperature}",
      f"--max_turns={args.max_turns}",
      f"--max_new_tokens={args.max_new_tokens}",
      f"--max_context_tokens={args.max_context_tokens}",
  ]
  if args.limit_per_task:
    argv.append(f"--limit_per_task={args.limit_per_task}")
  if args.system_prompt:
    argv.append("--system_prompt")
  os.makedirs(out, exist_ok=True)
  run(parse_args(argv))
  return out


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_multi_string(
      "results", [], "[NAME=]eval dir | summary.json | trajectories.jsonl", flag_values=fv
  )
  flags.DEFINE_multi_string(
      "checkpoint", [], "NAME=RUN_DIR: evaluate a training run", flag_values=fv
  )
  flags.DEFINE_multi_string(
      "hf", [], "NAME=HF_DIR: evaluate a Hugging Face Qwen3 directory", flag_values=fv
  )
  flags.DEFINE_string(
      "data", None, "Eval1 .parquet or .jsonl (needed with --checkpoint / --hf)", flag_values=fv
  )
  flags.DEFINE_string(
      "out", "compare_paper_out", "where evaluations and comparison.json go", flag_values=fv
  )
  flags.DEFINE_integer("n_samples", 1, "episodes per instance", flag_values=fv)
  flags.DEFINE_integer("limit_per_task", 0, "at most this many rows per task", flag_values=fv)
  flags.DEFINE_float("temperature", 0.6, "sampling temperature", flag_values=fv)
  flags.DEFINE_integer("max_turns", 48, "assistant replies per episode", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 4096, "sampled tokens per turn", flag_values=fv)
  flags.DEFINE_integer("max_context_tokens", 49_152, "context cap per call", flag_values=fv)
  flags.DEFINE_bool(
      "system_prompt", False, "put the protocol's system prompt first", flag_values=fv
  )


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if asks_for_help(argv):
    print(help_text(__doc__, define_flags))
    return 0
  try:
    args = parse_flags("compare_paper.py", argv, define_flags, CompareError)
  except CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    results = list(args.results)
    to_evaluate = [("checkpoint", a) for a in args.checkpoint] + [("hf", a) for a in args.hf]
    if to_evaluate and not args.data:
      raise CompareError(
          "--data (the Eval1 parquet or jsonl) is required to evaluate --checkpoint / --hf"
      )
    if not results and not to_evaluate:
      raise CompareError("nothing to compare: give --results, --checkpoint or --hf")
    for kind, arg in to_evaluate:
      name, path = split_named(arg)
      name = name or os.path.basename(os.path.normpath(path))
      results.append(f"{name}={evaluate(kind, name, path, args)}")
    ours: dict[str, dict[str, float]] = {}
    for arg in results:
      name, path = split_named(arg)
      system, scores = read_result(path)
      ours[name or system] = scores
  except CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  header, rows, data = comparison(ours)
  print(format_rows(header, rows))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "comparison.json"), "w") as f:
    json.dump(data, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
