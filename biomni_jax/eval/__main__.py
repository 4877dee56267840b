"""`python -m biomni_jax.eval`: evaluate an agent on Biomni-Eval1 or the embedded tasks; print the paper's table.

    python -m biomni_jax.eval --checkpoint=RUN_DIR --data=eval1.parquet --n_samples=1 --out=DIR
    python -m biomni_jax.eval --hf=QWEN3_DIR --tasks=embedded --n_samples=4 --out=DIR
    python -m biomni_jax.eval --agent=oracle --data=eval1_sample --out=DIR

--data: an Eval1 .parquet or .jsonl, or "eval1_sample" for the 50 real rows shipped in
biomni_jax/env/data/ (also at biomni_jax/env/data/eval1_sample_50.jsonl in a checkout). --tasks:
"embedded" (every embedded family; the default without --data) or comma-separated task names (Eval1
names with --data, embedded family names without). Writes DIR/trajectories.jsonl (every graded episode)
and DIR/summary.json (per task mean, pass@k; the average). Bad input (a malformed or unknown flag, a
missing checkpoint, a wrong data path, an unknown task name) ends with a one-line message and exit
status 2. The same evaluation runs from a config with
`python -m biomni_jax.main --config=configs/demo.py --workdir=DIR --config.mode=eval` (eval/evaluate.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from absl import flags

from biomni_jax import cli
from biomni_jax.eval import evaluate, harness
from biomni_jax.eval.agents import AgentLoadError, load_hf_agent, load_run_agent
from biomni_jax.eval.tasks import EMBEDDED, EvalInputError

USAGE_ERROR = 2
PROGRAM = "python -m biomni_jax.eval"
AGENT_FLAGS = ("checkpoint", "hf", "agent")


def define_flags(fv: flags.FlagValues) -> None:
  """The command's flags, on their own FlagValues (importing this module defines no global flag)."""
  flags.DEFINE_string(
      "checkpoint", None, "a biomni_jax SFT or RL run's workdir (newest checkpoint)", flag_values=fv
  )
  flags.DEFINE_string(
      "hf",
      None,
      "a Hugging Face Qwen3 directory (config.json, safetensors, tokenizer)",
      flag_values=fv,
  )
  flags.DEFINE_enum(
      "agent",
      None,
      ["oracle"],
      "a scripted agent: 'oracle' answers with the ground truth",
      flag_values=fv,
  )
  flags.DEFINE_string(
      "data",
      None,
      "Eval1 .parquet or .jsonl, or 'eval1_sample'; omit for the embedded tasks",
      flag_values=fv,
  )
  flags.DEFINE_string("tasks", "", f"'{EMBEDDED}' or comma-separated task names", flag_values=fv)
  flags.DEFINE_string("split", "val", "embedded tasks: split", flag_values=fv)
  flags.DEFINE_integer("per_family", 8, "embedded tasks: instances per family", flag_values=fv)
  flags.DEFINE_integer(
      "limit_per_task", 0, "Eval1: at most this many rows per task (0 = all)", flag_values=fv
  )
  flags.DEFINE_integer("n_samples", 1, "episodes per instance", flag_values=fv)
  flags.DEFINE_string(
      "k", "", "pass@k values, comma-separated (default: 1 and n_samples)", flag_values=fv
  )
  flags.DEFINE_string("out", None, "output directory", flag_values=fv)
  flags.DEFINE_integer("max_turns", 6, "assistant replies per episode", flag_values=fv)
  flags.DEFINE_float("temperature", 0.6, "model: sampling temperature", flag_values=fv)
  flags.DEFINE_integer("max_new_tokens", 256, "model: sampled tokens per turn", flag_values=fv)
  flags.DEFINE_integer("max_context_tokens", 1536, "model: context cap per call", flag_values=fv)
  flags.DEFINE_bool(
      "system_prompt", False, "model: put the protocol's system prompt first", flag_values=fv
  )
  flags.DEFINE_integer("workers", 2, "sandbox sessions at once", flag_values=fv)
  flags.DEFINE_integer("seed", 1000, "model: sampling seed", flag_values=fv)
  flags.DEFINE_bool("quiet", False, "no progress bar", flag_values=fv)


def parse_args(argv: Sequence[str]) -> flags.FlagValues:
  """The parsed flags of `argv` (without the program name); EvalInputError names what is wrong."""
  fv = cli.parse_flags(PROGRAM, argv, define_flags, EvalInputError)
  given = [f"--{name}" for name in AGENT_FLAGS if fv[name].value is not None]
  if len(given) != 1:
    raise EvalInputError(
        f"give exactly one of --checkpoint=RUN_DIR, --hf=HF_DIR or --agent=oracle, found "
        f"{given or 'none'}"
    )
  if not fv.out:
    raise EvalInputError("--out is required (the output directory)")
  return fv


def run(args) -> dict:
  """Evaluate as the flags say; writes trajectories.jsonl and summary.json into args.out."""
  if args.n_samples < 1:
    raise EvalInputError(f"--n_samples: expected >= 1, found {args.n_samples}")
  ks = evaluate.parse_ks(args.k, args.n_samples, "--k")
  instances, envs = evaluate.load_instances(
      args.data or "", args.tasks, args.split, args.per_family, args.limit_per_task
  )
  settings = harness.ModelEvalSettings(
      temperature=args.temperature,
      max_turns=args.max_turns,
      max_new_tokens_per_turn=args.max_new_tokens,
      max_context_tokens=args.max_context_tokens,
      use_system_prompt=args.system_prompt,
      sandbox_workers=args.workers,
      seed=args.seed,
  )
  if args.agent == evaluate.ORACLE:
    agent, system = evaluate.ORACLE, evaluate.ORACLE
  else:
    agent = load_run_agent(args.checkpoint) if args.checkpoint else load_hf_agent(args.hf)
    system = os.path.basename(os.path.normpath(args.checkpoint or args.hf))
  records = evaluate.play(
      agent, instances, envs, args.n_samples, settings, args.out, progress=not args.quiet
  )
  task_order = [x.task_name for x in instances]
  summary = harness.summarize(records, ks, task_order)
  trajectories = os.path.join(args.out, "trajectories.jsonl")
  harness.write_records(records, trajectories)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump({"system": system, **summary}, f, indent=1)
  print(evaluate.report_text(system, summary, ks, task_order, trajectories))
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if cli.asks_for_help(argv):
    print(cli.help_text(__doc__, define_flags))
    return 0
  try:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    run(args)
  except (EvalInputError, AgentLoadError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
