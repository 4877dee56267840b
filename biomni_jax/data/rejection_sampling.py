"""Rejection sampling of SFT data: n teacher rollouts per task in the real environment, keep the best.

For each task instance, n rollouts run through biomni_jax.env.episode.run_episode against a fresh
sandbox session holding the family's tools. Each candidate is scored (env/environment.py)

    correctness = family.reward(solution, answer)   (0 without a solution; the official grade is
                                                      recorded too, in info["official_grade"])
    format      = protocol.format_reward(assistant messages)
    reward      = correctness + format                (docs/recipe.md section 1.3; range 0..2)

and the best one (highest reward; ties: the fewest characters, then the lowest sample index) is
kept iff its reward >= min_reward. Kept trajectories are appended to `out_path` (jsonl, see
biomni_jax.data.trajectory) as their task finishes; every finished task, kept or not, gets one line
in the manifest `out_path + ".tasks.jsonl"` (task key, candidate rewards, kept). A restart skips the
tasks found in either file, so a killed run resumes without duplicates; a torn last line (a kill
during a write) is cut off first. Tasks whose rollouts failed (teacher or sandbox errors) are not
recorded and run again on restart; a fatal teacher error (bad key, unknown model) stops the run.

Rollouts of all pending tasks share one thread pool of `concurrency` workers; the session pool
(SandboxPool) bounds how many sessions exist at once. `answer_hiding_pool` builds a pool that also
hides the directories holding answers (the packaged Eval1 rows, the output dir) from session code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from biomni_jax import cli
from biomni_jax.data.task_manifest import append_row, load_finished, manifest_path, manifest_row
from biomni_jax.data.teachers import TEACHERS, TeacherError, TeacherFactory, make_teacher_factory
from biomni_jax.data.trajectory import Trajectory, append_jsonl, read_jsonl, write_jsonl
from biomni_jax.env import eval1, protocol
from biomni_jax.env.environment import (
    COMMON_TOOLS,
    FamilyEnvironment,
    family_environment,
    open_session,
    score_episode,
)
from biomni_jax.env.episode import Episode, run_episode
from biomni_jax.env.tasks import TaskInstance, family_names, get_family

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the sandbox


def answer_hiding_pool(
    max_workers: int = 2,
    out_path: str | None = None,
    extra_hidden: Sequence[str] = (),
    **pool_kwargs,
):
  """A SandboxPool whose sessions cannot read the project, the packaged Eval1 rows or the output.

  The packaged Eval1 sample's directory (`biomni_jax/env/data`, answers included; already inside the
  hidden checkout or package directory, named anyway so that it stays hidden whatever the default)
  and the output file's directory (kept trajectories carry answers) join the pool's default hidden
  paths when they exist; a directory holding the Python runtime is never hidden (sessions need it).
  Tool modules are preloaded so that opening a session costs no import time.
  """
  from biomni_jax.env.sandbox import SandboxPool
  from biomni_jax.env.sandbox.pool import default_hidden_paths

  hidden = list(default_hidden_paths())
  candidates = [str(eval1.sample_path().parent), *extra_hidden]
  if out_path is not None:
    candidates.append(os.path.dirname(os.path.abspath(out_path)))
  runtime = [
      os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))
  ]
  for path in candidates:
    real = os.path.realpath(path)
    if not os.path.isdir(real) or real in hidden:
      continue
    if any(r == real or r.startswith(real.rstrip("/") + "/") for r in runtime):
      log.warning("answer_hiding_pool: not hiding %s: it holds the Python runtime", real)
      continue
    hidden.append(real)
  pool_kwargs.setdefault(
      "preload", ["biomni_jax.env.tools.knowledge_tools", "biomni_jax.env.tools.sequence_tools"]
  )
  return SandboxPool(max_workers=max_workers, hidden_paths=hidden, **pool_kwargs)


# ----------------------------------------------------------------------------- candidates and selection


@dataclasses.dataclass
class Candidate:
  """One rollout of one task. reward = rewards["correctness"] + rewards["format"]; error: why it failed."""

  sample_index: int
  episode: Episode | None
  rewards: dict[str, float]
  reward: float
  official_grade: float
  seconds: float
  error: str | None = None

  @property
  def length(self) -> int:
    """Characters in the whole conversation (the tie-breaker: shorter wins)."""
    return sum(len(m["content"]) for m in self.episode.messages) if self.episode else 0

  @property
  def writable(self) -> bool:
    """A trajectory record needs non-empty message contents (an empty teacher reply has none)."""
    return (
        self.error is None
        and self.episode is not None
        and all(m["content"] for m in self.episode.messages)
    )


def select_best(candidates: Sequence[Candidate]) -> Candidate | None:
  """The writable candidate with the highest reward; ties: shortest, then lowest sample index."""
  eligible = [c for c in candidates if c.writable]
  if not eligible:
    return None
  return min(eligible, key=lambda c: (-c.reward, c.length, c.sample_index))


def run_candidate(
    env: FamilyEnvironment,
    instance: TaskInstance,
    sample_index: int,
    teacher_factory: TeacherFactory,
    pool: Any,
    cfg: protocol.ProtocolConfig,
    max_turns: int,
    timeout_s: float,
) -> Candidate:
  """One rollout in a fresh session of `pool`. Errors become a failed Candidate; fatal teacher errors raise."""
  start = time.monotonic()
  try:
    teacher = teacher_factory(instance, sample_index)
    session = open_session(pool, env, instance)
    try:
      episode = run_episode(
          teacher,
          instance.prompt,
          session,
          cfg=cfg,
          max_turns=max_turns,
          system=env.system,
          timeout_s=timeout_s,
      )
    finally:
      session.close()
  except TeacherError as error:
    if error.fatal:
      raise
    return Candidate(
        sample_index, None, {}, 0.0, 0.0, time.monotonic() - start, f"teacher: {error}"
    )
  except (
      Exception
  ) as error:  # a sandbox that failed to open, an agent that crashed: retried on restart
    return Candidate(
        sample_index,
        None,
        {},
        0.0,
        0.0,
        time.monotonic() - start,
        f"{type(error).__name__}: {error}",
    )
  rewards, reward, grade = score_episode(env.family, instance, episode, cfg)
  return Candidate(sample_index, episode, rewards, reward, grade, time.monotonic() - start)


def trajectory_of(
    instance: TaskInstance, best: Candidate, candidates: Sequence[Candidate], teacher: str
) -> Trajectory:
  """The record of a kept candidate: its messages, task metadata, rewards and those of all candidates."""
  ep = best.episode
  metadata = json.loads(json.dumps(instance.metadata, default=str))
  return Trajectory(
      messages=[dict(m) for m in ep.messages],
      task={
          "task_name": instance.task_name,
          "instance_id": instance.instance_id,
          "split": instance.split,
          "answer": instance.answer,
          "metadata": metadata,
      },
      reward=best.reward,
      rewards=dict(best.rewards),
      info={
          "n": len(candidates),
          "candidate_rewards": [c.reward for c in candidates],
          "selected_index": best.sample_index,
          "official_grade": best.official_grade,
          "termination": ep.termination,
          "turns": ep.turns,
          "parse_errors": ep.parse_errors,
          "teacher": teacher,
      },
  )


# ----------------------------------------------------------------------------- the driver


@dataclasses.dataclass
class SamplingSummary:
  """Statistics over the requested tasks that are finished (including those of earlier runs).

  kept_fraction: kept / finished; mean_best_reward: mean over finished tasks of the best
  candidate's reward; mean_candidate_reward: mean over all their candidates; mean_kept_reward:
  mean over kept trajectories. per_family: the same figures per task family.
  """

  tasks: int
  skipped: int
  finished: int
  failed: int
  kept: int
  kept_fraction: float
  mean_best_reward: float
  mean_candidate_reward: float
  mean_kept_reward: float
  rollouts: int
  wall_s: float
  per_family: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


def _stats(rows: list[dict]) -> dict[str, float]:
  kept = [r for r in rows if r["kept"]]

  def mean(values):
    return float(np.mean(values)) if len(values) else float("nan")

  return {
      "finished": len(rows),
      "kept": len(kept),
      "kept_fraction": len(kept) / len(rows) if rows else float("nan"),
      "mean_best_reward": mean([r["best_reward"] for r in rows]),
      "mean_candidate_reward": mean([v for r in rows for v in r["candidate_rewards"]]),
      "mean_kept_reward": mean([r["best_reward"] for r in kept]),
  }


def write_in_task_order(path: str, instances: Sequence[TaskInstance]) -> None:
  """Rewrite `path` (atomically) with its trajectories in the order of `instances`, then any others in
  their file order. Rollouts finish, and are appended, in whatever order the threads run; the SFT data,
  and so the model trained on it, must not depend on that."""
  if not os.path.exists(path):
    return
  order = {(x.task_name, x.instance_id): i for i, x in enumerate(instances)}
  trajectories = read_jsonl(path)
  ordered = sorted(  # stable: trajectories of other requests keep their order, after these
      trajectories,
      key=lambda t: order.get((t.task.get("task_name"), t.task.get("instance_id")), len(order)),
  )
  if any(a is not b for a, b in zip(ordered, trajectories)):
    write_jsonl(path, ordered)


def generate_sft_data(
    families: Sequence[str],
    split: str,
    n_per_family: int,
    n_samples: int,
    teacher_factory: TeacherFactory,
    out_path: str | os.PathLike,
    pool: Any,
    *,
    start: int = 0,
    min_reward: float = 2.0,
    concurrency: int | None = None,
    max_turns: int = 8,
    timeout_s: float = 120.0,
    extra_tools: Sequence[str] = COMMON_TOOLS,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
    family_kwargs: dict[str, dict] | None = None,
    progress: bool = True,
) -> SamplingSummary:
  """Best-of-n rejection sampling over instances [start, start + n_per_family) of each family's split.

  teacher_factory(instance, sample_index) -> Teacher (biomni_jax.data.teachers).
  pool: a session pool (`.open(tools=[...])` -> session with `.run(code, timeout_s)` and
    `.close()`), normally `answer_hiding_pool(...)`.
  min_reward: keep the best candidate only if its reward reaches this (2.0: correct and well
    formatted).
  concurrency: rollouts in flight at once (default: the pool's max_workers).
  family_kwargs: per-family constructor arguments for get_family.
  Returns the summary over all finished requested tasks (see SamplingSummary); it is also logged.
  """
  if n_samples < 1 or n_per_family < 1:
    raise ValueError(
        f"generate_sft_data: expected n_samples >= 1 and n_per_family >= 1, "
        f"found n_samples={n_samples}, n_per_family={n_per_family}"
    )
  if not families:
    raise ValueError("generate_sft_data: expected at least one family, found none")
  from tqdm import tqdm

  wall = time.monotonic()
  out_path = os.fspath(out_path)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  manifest = manifest_path(out_path)
  finished = load_finished(out_path)
  envs, instances = {}, []
  for name in families:
    family = get_family(name, **(family_kwargs or {}).get(name, {}))
    envs[name] = family_environment(family, extra_tools, cfg)
    instances += family.instances(split, n_per_family, start)
  requested = {(x.task_name, x.instance_id) for x in instances}
  pending = [x for x in instances if (x.task_name, x.instance_id) not in finished]
  skipped = len(instances) - len(pending)
  if skipped:
    log.info(
        "generate_sft_data: %d of %d tasks already finished in %s; skipping them",
        skipped,
        len(instances),
        out_path,
    )
  workers = concurrency or getattr(pool, "max_workers", 4)
  teacher_name = getattr(teacher_factory, "name", type(teacher_factory).__name__)
  results: dict[tuple[str, str], dict[int, Candidate]] = {}
  failed = rollouts = 0
  first_error = None
  progress_rows = [finished[k] for k in requested if k in finished]
  bar = tqdm(total=len(pending), desc="rejection sampling", unit="task", disable=not progress)
  executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rollout")
  try:
    futures = {}
    for x in pending:  # instance-major submission: tasks finish (and are written) progressively
      for k in range(n_samples):
        future = executor.submit(
            run_candidate, envs[x.task_name], x, k, teacher_factory, pool, cfg, max_turns, timeout_s
        )
        futures[future] = x
    for future in concurrent.futures.as_completed(futures):
      x = futures[future]
      candidate = future.result()  # a fatal teacher error stops the run here
      rollouts += 1
      key = (x.task_name, x.instance_id)
      results.setdefault(key, {})[candidate.sample_index] = candidate
      if len(results[key]) < n_samples:
        continue
      by_index = results.pop(key)
      candidates = [by_index[k] for k in range(n_samples)]
      bar.update(1)
      errors = [c.error for c in candidates if c.error]
      if errors:
        failed += 1
        first_error = first_error or errors[0]
        log.warning(
            "%s: %d of %d rollouts failed (task left for a restart); first: %s",
            x.instance_id,
            len(errors),
            n_samples,
            errors[0],
        )
        continue
      best = select_best(candidates)
      kept = best is not None and best.reward >= min_reward
      if kept:
        append_jsonl(out_path, trajectory_of(x, best, candidates, teacher_name))
      row = manifest_row(
          key,
          x.split,
          [c.reward for c in candidates],
          best.reward if best is not None else 0.0,
          kept,
      )
      append_row(manifest, row)
      finished[key] = row
      progress_rows.append(row)
      stats = _stats(progress_rows)
      bar.set_postfix(
          kept=f"{stats['kept_fraction']:.2f}",
          best=f"{stats['mean_best_reward']:.2f}",
          cand=f"{stats['mean_candidate_reward']:.2f}",
      )
  except BaseException:
    executor.shutdown(wait=True, cancel_futures=True)
    raise
  finally:
    bar.close()
  executor.shutdown(wait=True)
  if pending and failed == len(pending):
    raise RuntimeError(
        f"generate_sft_data: all {failed} pending tasks failed (nothing written); "
        f"first error: {first_error}"
    )

  write_in_task_order(out_path, instances)
  done = [finished[k] for k in sorted(requested) if k in finished]
  overall = _stats(done)
  per_family = {name: _stats([r for r in done if r["task_name"] == name]) for name in families}
  summary = SamplingSummary(
      tasks=len(instances),
      skipped=skipped,
      finished=overall["finished"],
      failed=failed,
      kept=overall["kept"],
      kept_fraction=overall["kept_fraction"],
      mean_best_reward=overall["mean_best_reward"],
      mean_candidate_reward=overall["mean_candidate_reward"],
      mean_kept_reward=overall["mean_kept_reward"],
      rollouts=rollouts,
      wall_s=time.monotonic() - wall,
      per_family=per_family,
  )
  log.info(
      "generate_sft_data: %d/%d tasks finished (%d failed), kept %d (%.3f); mean reward: candidates %.3f, "
      "best %.3f, kept %.3f; %d rollouts in %.1f s -> %s",
      summary.finished,
      summary.tasks,
      failed,
      summary.kept,
      summary.kept_fraction,
      summary.mean_candidate_reward,
      summary.mean_best_reward,
      summary.mean_kept_reward,
      rollouts,
      summary.wall_s,
      out_path,
  )
  return summary


# ----------------------------------------------------------------------------- the command line

PROGRAM = "python -m biomni_jax.data.rejection_sampling"
USAGE_ERROR = 2


class UsageError(ValueError):
  """A bad command line; the message names the flag."""


def define_flags(fv) -> None:
  """The command's absl flags, on their own FlagValues (importing this module defines no global flag)."""
  flags.DEFINE_string("out", None, "output jsonl (the manifest goes next to it)", flag_values=fv)
  flags.DEFINE_list("families", family_names(), "comma-separated task families", flag_values=fv)
  flags.DEFINE_string("split", "train", "task split", flag_values=fv)
  flags.DEFINE_integer(
      "n_per_family", 50, "task instances per family", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_integer("n_samples", 4, "teacher rollouts per task", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("start", 0, "first instance index", lower_bound=0, flag_values=fv)
  flags.DEFINE_float(
      "min_reward", 2.0, "keep the best rollout if its reward reaches this", flag_values=fv
  )
  flags.DEFINE_integer(
      "max_turns", 8, "assistant replies per episode", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_float("timeout_s", 120.0, "wall-time limit of one code execution", flag_values=fv)
  flags.DEFINE_integer(
      "workers", 2, "sandbox sessions (and rollouts) at once", lower_bound=1, flag_values=fv
  )
  flags.DEFINE_enum("teacher", "scripted", list(TEACHERS), "teacher kind", flag_values=fv)
  flags.DEFINE_float("mistake_rate", 0.3, "scripted teacher only", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "scripted teacher only", flag_values=fv)
  flags.DEFINE_string("model", None, "openai teacher: served model name", flag_values=fv)
  flags.DEFINE_float("temperature", 0.6, "openai teacher only", flag_values=fv)


def parse_args(argv: Sequence[str]):
  """The parsed flags of `argv` (without the program name); UsageError names what is wrong."""
  fv = cli.parse_flags(PROGRAM, argv, define_flags, UsageError)
  if not fv.out:
    raise UsageError("--out is required (the output .jsonl)")
  unknown = [f for f in fv.families if f not in family_names()]
  if unknown or not fv.families:
    raise UsageError(
        f"--families: expected some of {family_names()} (comma-separated), found "
        f"{unknown or 'none'}"
    )
  return fv


def teacher_factory(args):
  """The teacher factory the flags name (--teacher and its options)."""
  if args.teacher == "scripted":
    options = dict(mistake_rate=args.mistake_rate, seed=args.seed)
  else:
    options = dict(model=args.model, temperature=args.temperature, max_concurrency=args.workers)
  try:
    return make_teacher_factory(args.teacher, **options)
  except (KeyError, ValueError) as e:
    raise UsageError(f"--teacher={args.teacher}: {e.args[0] if e.args else e}") from None


def run(args) -> SamplingSummary:
  """Rejection sampling as the parsed flags say; prints and returns the summary."""
  factory = teacher_factory(args)
  with answer_hiding_pool(args.workers, out_path=args.out) as pool:
    summary = generate_sft_data(
        list(args.families),
        args.split,
        args.n_per_family,
        args.n_samples,
        factory,
        args.out,
        pool,
        start=args.start,
        min_reward=args.min_reward,
        max_turns=args.max_turns,
        timeout_s=args.timeout_s,
    )
  print(json.dumps(dataclasses.asdict(summary), indent=1))
  return summary


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m biomni_jax.data.rejection_sampling --out=DIR/sft.jsonl [--teacher=openai --model=NAME]`.

  A bad flag, an unknown task family or a bad teacher option ends with one line on stderr and
  status 2.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if cli.asks_for_help(argv):
    print(cli.help_text(__doc__, define_flags))
    return 0
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  try:
    run(parse_args(argv))
  except UsageError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return USAGE_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main())
