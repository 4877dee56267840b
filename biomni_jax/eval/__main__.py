"""`python -m biomni_jax.eval`: evaluate an agent on Biomni-Eval1 or the embedded tasks; print the paper's table.

    python -m biomni_jax.eval --checkpoint=RUN_DIR --data=eval1.parquet --n_samples=1 --out=DIR
    python -m biomni_jax.eval --hf=QWEN3_DIR --tasks=embedded --n_samples=4 --out=DIR
    python -m biomni_jax.eval --agent=oracle --data=../shared/data/eval1_sample/eval1_sample_50.jsonl --out=DIR

--tasks: "embedded" (every embedded family; the default without --data) or comma-separated task names (Eval1
names with --data, embedded family names without). Writes DIR/trajectories.jsonl (every graded episode) and
DIR/summary.json (per task mean, pass@k; the average). Bad input (a missing checkpoint, a wrong data path, an
unknown task name) ends with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from biomni_jax.eval import harness, table
from biomni_jax.eval.agents import AgentLoadError, load_hf_agent, load_run_agent, oracle_factory
from biomni_jax.eval.tasks import EMBEDDED, EvalInputError, load_eval1, load_embedded

USAGE_ERROR = 2


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m biomni_jax.eval", description=__doc__.split("\n", 1)[0]
  )
  who = p.add_mutually_exclusive_group(required=True)
  who.add_argument("--checkpoint", help="a biomni_jax SFT or RL run's workdir (newest checkpoint)")
  who.add_argument(
      "--hf", help="a Hugging Face Qwen3 directory (config.json, safetensors, tokenizer)"
  )
  who.add_argument(
      "--agent", choices=["oracle"], help="a scripted agent: 'oracle' answers with the ground truth"
  )
  p.add_argument("--data", help="Eval1 .parquet or .jsonl; omit for the embedded tasks")
  p.add_argument("--tasks", default="", help=f"'{EMBEDDED}' or comma-separated task names")
  p.add_argument("--split", default="val", help="embedded tasks: split")
  p.add_argument("--per_family", type=int, default=8, help="embedded tasks: instances per family")
  p.add_argument(
      "--limit_per_task",
      type=int,
      default=0,
      help="Eval1: at most this many rows per task (0 = all)",
  )
  p.add_argument("--n_samples", type=int, default=1, help="episodes per instance")
  p.add_argument(
      "--k", default="", help="pass@k values, comma-separated (default: 1 and n_samples)"
  )
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--max_turns", type=int, default=6)
  p.add_argument("--temperature", type=float, default=0.6)
  p.add_argument("--max_new_tokens", type=int, default=256, help="model: sampled tokens per turn")
  p.add_argument("--max_context_tokens", type=int, default=1536, help="model: context cap per call")
  p.add_argument(
      "--system_prompt", action="store_true", help="model: put the protocol's system prompt first"
  )
  p.add_argument("--workers", type=int, default=2, help="sandbox sessions at once")
  p.add_argument("--seed", type=int, default=1000)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def _instances(args):
  names = [t for t in args.tasks.split(",") if t and t != EMBEDDED]
  if args.data:
    if args.tasks.strip() == EMBEDDED:
      raise EvalInputError(
          f"--tasks={EMBEDDED} and --data both given; pass one (embedded tasks or an Eval1 file)"
      )
    return load_eval1(args.data, names, args.limit_per_task)
  return load_embedded(names, args.split, args.per_family, seed=0)


def run(args: argparse.Namespace) -> dict:
  if args.n_samples < 1:
    raise EvalInputError(f"--n_samples: expected >= 1, found {args.n_samples}")
  instances, envs = _instances(args)
  ks = sorted({int(k) for k in args.k.split(",") if k} or {1, args.n_samples})
  task_order = [x.task_name for x in instances]
  if args.agent == "oracle":
    from biomni_jax.data.rejection_sampling import answer_hiding_pool

    with answer_hiding_pool(args.workers, out_path=os.path.join(args.out, "x")) as pool:
      records = harness.run_text_agent(
          oracle_factory(),
          instances,
          envs,
          args.n_samples,
          pool,
          max_turns=args.max_turns,
          workers=args.workers,
          progress=not args.quiet,
      )
    system = "oracle"
  else:
    agent = load_run_agent(args.checkpoint) if args.checkpoint else load_hf_agent(args.hf)
    settings = harness.ModelEvalSettings(
        temperature=args.temperature,
        max_turns=args.max_turns,
        max_new_tokens_per_turn=args.max_new_tokens,
        max_context_tokens=args.max_context_tokens,
        use_system_prompt=args.system_prompt,
        sandbox_workers=args.workers,
        seed=args.seed,
    )
    records = harness.run_model(agent, instances, envs, args.n_samples, settings)
    system = os.path.basename(os.path.normpath(args.checkpoint or args.hf))
  summary = harness.summarize(records, ks, task_order)
  harness.write_records(records, os.path.join(args.out, "trajectories.jsonl"))
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump({"system": system, **summary}, f, indent=1)
  scores = {system: {t: e["mean"] for t, e in summary["tasks"].items()}}
  print(table.format_table(scores, task_order))
  for k in ks:
    values = [e[f"pass@{k}"] for e in summary["tasks"].values() if f"pass@{k}" in e]
    if values:
      print(f"pass@{k} (mean over tasks): {sum(values) / len(values):.3f}")
  print(
      f"{summary['episodes']} episodes; trajectories: {os.path.join(args.out, 'trajectories.jsonl')}"
  )
  return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  try:
    run(args)
  except (EvalInputError, AgentLoadError) as e:
    print(f"error: {e}", file=sys.stderr)
    return USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
