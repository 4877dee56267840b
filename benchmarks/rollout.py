"""Trajectories per minute: the asynchronous rollout pool vs the batch-synchronous loop vs the ideal bound.

    /work/venv/bin/python benchmarks/rollout.py [--batches 8] [--warmup 2] [--turns 4] [--tokens 24] [--slots 8]
        [--staleness 1] [--concurrency 2]

Setup. The engine is the real JAX engine on the tiny random Qwen3 (continuous batching, KV sessions):
every turn really generates `--tokens` tokens. A random model writes no protocol tags, so the reply
*text* is scripted (`<think>..</think><execute>sleep X</execute>`, `--turns - 1` times, then a
solution): compute is real, text is fixed, every episode has exactly `--turns` turns. Tools are
sleeps whose lengths are heavy-tailed (lognormal, sigma 1.0) with mean equal to one turn's measured
generation time at a full batch.

Peers, on the same episodes (B groups x G = slots episodes per batch):
  sync   all episodes of a batch in lockstep, as the original ran: every episode generates its turn,
         all wait for the slowest; every tool runs, all wait for the slowest tool; next turn; the
         next batch starts when the whole batch has finished.
  async  RolloutPool with max_staleness S (default 1) and --concurrency x slots episodes in flight; a fake
         trainer takes B groups per step and publishes a new version (same weights). Timed in steady state:
         from the delivery of the --warmup-th batch to that of --batches more (work already started for
         later batches is not counted; restarts of stale episodes are).
  bound  max(generation-bound, tool-bound). generation-bound = the lockstep loop above with tools that
         take no time: every turn of every episode generated at a full batch, with the contexts and
         observation prefills the episodes really have (later turns attend over longer contexts, so
         they cost more than the first). tool-bound = total tool seconds / episodes in flight (async).
         Also printed: the first-turn estimate turns x episodes / slots x the median full-batch first
         turn (8 prompts of 59 tokens), which ignores that growth and is not attainable.
Printed: trajectories/min of each, async/sync and async/bound, process CPU seconds of each timed run,
and the engine's own accounting of the timed async run (decode rows in use, tokens decoded vs
delivered, prefill calls and how many rode along a decode step, host offloads of evicted sessions, seconds in
decode (fused prefill included) / separate prefill calls / admission).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import sys
import tempfile
import time

import jax
import numpy as np

from biomni_jax import model as M
from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.env.environment import FamilyEnvironment
from biomni_jax.env.episode import result as exec_result
from biomni_jax.env.tasks import TaskFamily, TaskInstance
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.episode import request_seed, run_token_episode
from biomni_jax.rollout.pool import RolloutPool
from biomni_jax.rollout.tool_runner import ToolRunner
from biomni_jax.sampling import AsyncEngine, Completion, Engine, SamplingParams

SYSTEM = "You are a benchmark agent."


class BenchFamily(TaskFamily):
  name = "bench"

  def make_instance(self, split, index):
    return TaskInstance("bench", f"bench/{index}", f"Task {index}.", "0", split)

  def grade(self, prediction, answer):
    return float(str(prediction).strip() == answer)


class ScriptedTextEngine:
  """Real generation of `tokens` tokens per turn; the returned ids are the scripted reply's."""

  def __init__(self, engine: AsyncEngine, renderer, turns, tokens, tool_mean_s, seed=0):
    self.inner, self.renderer, self.turns, self.tokens = engine, renderer, turns, tokens
    self.engine = engine.engine  # the pool reads the slot count from here
    self.tool_mean_s, self.seed = tool_mean_s, seed
    self._turn, self._instance = {}, {}

  def open_session(self):
    return self.inner.open_session()

  def close_session(self, session):
    self.inner.close_session(session)

  def tool_seconds(self, key) -> float:
    """Lognormal(sigma 1) with mean tool_mean_s, keyed (same draw for the same episode turn)."""
    rng = np.random.default_rng(request_seed(self.seed, *key))
    sigma = 1.0
    return float(self.tool_mean_s * np.exp(sigma * rng.standard_normal() - sigma**2 / 2))

  async def generate(self, session, ids, params):
    if session.id not in self._turn:
      self._instance[session.id] = (
          self.renderer.tokenizer.decode(ids).rsplit("Task ", 1)[1].split(".")[0]
      )
      self._turn[session.id] = 0
    self._turn[session.id] += 1
    turn = self._turn[session.id]
    real = dataclasses.replace(params, stop=(), stop_token_ids=(), max_new_tokens=self.tokens)
    c = await self.inner.generate(session, ids, real)
    if turn < self.turns:
      key = (self._instance[session.id], params.seed, turn)
      text = f"<think>step {turn}</think><execute>sleep {self.tool_seconds(key):.4f}</execute>"
    else:
      text = "<think>done</think><solution>0</solution>"
    out = self.renderer.encode(text)
    version = c.token_versions[0] if c.token_versions else 0
    return Completion(tuple(out), tuple([-1.0] * len(out)), "stop", version, (version,) * len(out))


class SleepSession:

  async def arun(self, code, timeout_s):
    await asyncio.sleep(float(code.split()[1]))
    return exec_result("ok")

  def close(self):
    pass


class SleepSandbox:

  def open(self, tools=()):
    return SleepSession()


class LockstepEngine:
  """Every generate waits until all episodes of the batch reach it (a barrier)."""

  def __init__(self, engine, barrier):
    self.engine, self.barrier = engine, barrier

  def open_session(self):
    return self.engine.open_session()

  def close_session(self, session):
    self.engine.close_session(session)

  async def generate(self, session, ids, params):
    await self.barrier.wait()
    return await self.engine.generate(session, ids, params)


class LockstepTools(ToolRunner):

  async def run(self, code, timeout_s):
    await self.barrier.wait()
    return await super().run(code, timeout_s)


def tasks(start, n):
  family = BenchFamily()
  return iter([family.instance("train", i) for i in range(start, start + n)])


async def sync_loop(engine, renderer, env, cfg, batches):
  executor = concurrent.futures.ThreadPoolExecutor(4)
  per_batch = cfg.groups_per_batch * cfg.group_size
  done = 0
  for b in range(batches):
    barrier = asyncio.Barrier(per_batch)
    instances = list(tasks(10_000 + b * cfg.groups_per_batch, cfg.groups_per_batch))

    async def one(instance, i):
      runner = LockstepTools(SleepSandbox(), (), executor)
      runner.barrier = barrier
      return await run_token_episode(
          LockstepEngine(engine, barrier), runner, renderer, env, instance, cfg, sample_index=i
      )

    trajs = await asyncio.gather(
        *[one(inst, i) for inst in instances for i in range(cfg.group_size)]
    )
    done += sum(t.termination == "solution" for t in trajs)
  return done


def full_batch_turn_time(engine: Engine, slots, tokens, repeats=7):
  sp = SamplingParams(temperature=1.0, max_new_tokens=tokens)
  prompt = list(range(1, 60))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for f in [engine.generate(prompt, sp) for _ in range(slots)]:
      f.result()
    times.append(time.perf_counter() - t)
  return float(np.median(times[1:]))


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", type=int, default=8, help="timed batches of each peer")
  ap.add_argument(
      "--warmup", type=int, default=2, help="async batches delivered before the timed ones"
  )
  ap.add_argument("--turns", type=int, default=4)
  ap.add_argument("--tokens", type=int, default=24)
  ap.add_argument("--slots", type=int, default=8)
  ap.add_argument("--group-size", type=int, default=4)
  ap.add_argument("--staleness", type=int, default=1)
  ap.add_argument("--concurrency", type=float, default=2.0, help="async episodes in flight / slots")
  ap.add_argument(
      "--tool-scale", type=float, default=1.0, help="tool mean / one turn's generation time"
  )
  args = ap.parse_args(argv)

  tokenizer = train_embedded_tokenizer(default_corpus(), 1024, tempfile.mkdtemp())
  renderer = ChatRenderer(tokenizer)
  config = M.get_preset("tiny", vocab_size=len(tokenizer))
  params = M.init_params(config, jax.random.key(0))
  engine = Engine(
      config,
      params,
      num_slots=args.slots,
      max_len=1024,
      detokenize=tokenizer.decode,
      max_prefill_chunk=128,
      decode_block=64,
  )
  engine.precompile()  # every prefill bucket, alone and with the decode step (the peers share these programs)
  turn_s = full_batch_turn_time(engine, args.slots, args.tokens)
  tool_mean = args.tool_scale * turn_s
  groups_per_batch = max(1, args.slots // args.group_size)
  episodes_per_batch = groups_per_batch * args.group_size
  env = FamilyEnvironment(BenchFamily(), (), SYSTEM)
  cfg = RolloutConfig(
      group_size=args.group_size,
      groups_per_batch=groups_per_batch,
      max_turns=args.turns,
      max_new_tokens_per_turn=args.tokens,
      temperature=1.0,
      top_p=1.0,
      max_staleness=args.staleness,
      max_concurrent_episodes=max(1, int(args.concurrency * args.slots)),
      tool_timeout_s=60.0,
  )
  scripted = ScriptedTextEngine(AsyncEngine(engine), renderer, args.turns, args.tokens, tool_mean)
  n_traj = args.batches * episodes_per_batch

  asyncio.run(sync_loop(scripted, renderer, env, cfg, 1))  # warm-up: compile every prefill bucket
  compiled = len(engine.compilations)
  t, cpu = time.perf_counter(), time.process_time()
  done = asyncio.run(sync_loop(scripted, renderer, env, cfg, args.batches))
  sync_s, sync_cpu = time.perf_counter() - t, time.process_time() - cpu
  assert done == n_traj, f"sync loop: expected {n_traj} solved trajectories, found {done}"
  if len(engine.compilations) != compiled:
    print(
        f"note: {len(engine.compilations) - compiled} programs compiled during the timed sync run"
    )

  def run_pool(warmup, batches, first_version):
    """Delivers warmup + batches batches; times the last `batches` (the pipeline is full by then)."""
    pool = RolloutPool(
        scripted,
        SleepSandbox(),
        renderer,
        tasks(first_version * 1000, 10**6),
        cfg,
        environments={"bench": env},
        version=first_version,
    )
    got, compiled = 0, None
    with pool:
      for step in range(warmup + batches):
        if step == warmup:
          t, compiled, before = time.perf_counter(), len(engine.compilations), dict(engine.stats)
          cpu = time.process_time()
        groups = pool.get_groups(groups_per_batch, timeout_s=600)
        if step >= warmup:
          got += sum(len(g.trajectories) for g in groups)
        engine.update_params(params, first_version + step + 1)
        pool.publish_version(first_version + step + 1)
      seconds = time.perf_counter() - t
      work = {k: engine.stats[k] - before[k] for k in before}
      work["process_cpu_seconds"] = time.process_time() - cpu
      return got, seconds, {**pool.stats(), **work}, len(engine.compilations) - compiled

  engine.update_params(params, 100)
  run_pool(0, 2, 100)  # warm-up: evicted sessions restore and re-prefill (more program shapes)
  engine.update_params(params, 200)
  got, async_s, stats, new_programs = run_pool(args.warmup, args.batches, 200)
  assert got == n_traj, f"async pool: expected {n_traj} trajectories, found {got}"
  if new_programs:
    print(f"note: {new_programs} programs compiled during the timed async run")

  # Generation alone at a full batch: the lockstep loop with zero-length tools.
  generation_only = ScriptedTextEngine(AsyncEngine(engine), renderer, args.turns, args.tokens, 0.0)
  t = time.perf_counter()
  done = asyncio.run(sync_loop(generation_only, renderer, env, cfg, args.batches))
  gen_bound = time.perf_counter() - t
  assert (
      done == n_traj
  ), f"generation-only loop: expected {n_traj} solved trajectories, found {done}"
  first_turn_estimate = args.turns * n_traj / args.slots * turn_s
  tool_total = n_traj * (args.turns - 1) * tool_mean
  bound_s = max(gen_bound, tool_total / cfg.max_concurrent_episodes)
  estimate_s = max(first_turn_estimate, tool_total / cfg.max_concurrent_episodes)
  per_min = lambda s: 60.0 * n_traj / s  # noqa: E731
  print(
      f"episodes {n_traj} x {args.turns} turns x {args.tokens} tokens, slots {args.slots}, "
      f"full-batch turn {turn_s * 1e3:.0f} ms, tool mean {tool_mean * 1e3:.0f} ms (lognormal sigma 1)"
  )
  print(
      f"sync  : {per_min(sync_s):8.1f} trajectories/min ({sync_s:.2f} s, process CPU {sync_cpu:.2f} s)"
  )
  print(
      f"async : {per_min(async_s):8.1f} trajectories/min ({async_s:.2f} s, process CPU "
      f"{stats['process_cpu_seconds']:.2f} s), S={args.staleness}, "
      f"staleness {stats['staleness_histogram']}, restarts {stats['stale_restarts']}"
  )
  print(
      f"        engine: busy {stats['engine_busy_fraction']:.2f}, decode rows used "
      f"{stats['decoded_tokens'] / max(1, stats['decode_steps']) / args.slots:.2f}, tokens decoded "
      f"{stats['decoded_tokens']} (delivered {n_traj * args.turns * args.tokens}), prefill calls "
      f"{stats['prefill_calls']} ({stats['fused_prefills']} within a decode step, {stats['prefilled_tokens']} tokens), {stats['offloads']} host offloads "
      f"({stats['restored_tokens']} tokens restored); seconds: decode {stats['decode_seconds']:.2f}, prefill "
      f"{stats['prefill_seconds']:.2f}, admit+offload {stats['admit_seconds']:.2f}, idle {stats['idle_seconds']:.2f}"
  )
  print(
      f"bound : {per_min(bound_s):8.1f} trajectories/min ({bound_s:.2f} s; generation {gen_bound:.2f} s "
      f"measured at a full batch with zero-length tools, tools {tool_total / cfg.max_concurrent_episodes:.2f} s)"
  )
  print(
      f"        first-turn estimate {per_min(estimate_s):.1f} trajectories/min (generation "
      f"{first_turn_estimate:.2f} s): async / estimate = {estimate_s / async_s:.2f}"
  )
  print(f"async / sync  = {sync_s / async_s:.2f}x")
  print(f"async / bound = {bound_s / async_s:.2f}")
  engine.shutdown()
  return 0


if __name__ == "__main__":
  sys.exit(main())
