"""The asynchronous rollout pool: many episodes in flight, grouped G per task, paced by staleness.

    pool = RolloutPool(engine, sandbox_pool, tokenizer, tasks, RolloutConfig(...))
    with pool:                                          # start(): its own asyncio loop in a thread
        groups = pool.get_groups(32)                     # blocks; every token >= current version - S
        ... train ...
        engine.update_params(params, v + 1); pool.publish_version(v + 1)

Inside the loop thread: an admitter starts groups while admission control allows (admission.py);
each group is G episode coroutines (episode.py) limited to `max_concurrent_episodes` at once. An
episode's turns go to the engine (its own session, only new tokens submitted); its code goes to its
own sandbox session through a thread pool, so the engine keeps serving other episodes meanwhile.
Finished groups wait in a buffer; `get_groups` hands them out first finished, first served.

Failures stay local: an engine error ends that episode (termination "error"; excluded from its
group or kept with reward 0, `error_policy`); a group whose episodes all failed is dropped (its task
still counts as consumed); `max_failed_groups_in_a_row` such groups make `get_groups` raise instead
of waiting forever. Sandbox failures are observations (tool_runner.py).

Resume: `consumed_task_ids()` lists the instance ids of every delivered (or dropped) group, restored
ones included. `restore_consumed(ids)` before `start()` skips those ids in the task iterator, counted
as a multiset (a task repeated across epochs is skipped once per consumed copy).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from biomni_jax.data.chat import ChatRenderer
from biomni_jax.env import protocol
from biomni_jax.env.environment import FamilyEnvironment, family_environment
from biomni_jax.env.tasks import TaskInstance, get_family, sandbox_setup_code
from biomni_jax.rollout.admission import AdmissionControl
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.episode import EpisodeAborted, run_token_episode
from biomni_jax.rollout.tool_runner import ToolRunner
from biomni_jax.rollout.types import Group, TokenTrajectory
from biomni_jax.rollout.usage import EngineUsage

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
  """The pool cannot deliver groups (its loop died, or every episode keeps failing)."""


@dataclasses.dataclass(eq=False)
class _GroupState:
  group_id: int
  instance: TaskInstance
  env: FamilyEnvironment
  trajectories: list  # [G] Optional[TokenTrajectory]
  attempts: list  # [G] int
  pending: int = 0


def _as_async_engine(engine: Any) -> Any:
  from biomni_jax.sampling import AsyncEngine, Engine, EngineGroup

  return AsyncEngine(engine) if isinstance(engine, (Engine, EngineGroup)) else engine


class RolloutPool:
  """See the module docstring.

  engine: biomni_jax.sampling.Engine or AsyncEngine (or anything with open_session, close_session
    and `async generate(session, ids, params)`).
  sandbox: biomni_jax.env.sandbox.SandboxPool (or anything with open(tools=[...])).
  tokenizer: a tokenizer, or a ChatRenderer built on one.
  tasks: an iterator of TaskInstance; its end ends the run (get_groups then returns what is left).
  version: the weight version the engine starts with (default: the engine's, else 0).
  environments: task_name -> FamilyEnvironment (tools + system prompt); default built from
    get_family(task_name, **family_kwargs.get(task_name, {})) plus cfg.extra_tools.
  """

  def __init__(
      self,
      engine: Any,
      sandbox: Any,
      tokenizer: Any,
      tasks: Iterator[TaskInstance],
      cfg: RolloutConfig,
      *,
      version: Optional[int] = None,
      environments: Optional[dict[str, FamilyEnvironment]] = None,
      family_kwargs: Optional[dict[str, dict]] = None,
  ):
    self.cfg = cfg
    self.engine = _as_async_engine(engine)
    self.sandbox = sandbox
    self.renderer = tokenizer if isinstance(tokenizer, ChatRenderer) else ChatRenderer(tokenizer)
    self._tasks = iter(tasks)
    if version is None:
      inner = getattr(self.engine, "engine", self.engine)
      version = int(getattr(inner, "version", 0) or 0)
    self._pcfg = protocol.ProtocolConfig(
        answer_tag=cfg.answer_tag, max_observation_chars=cfg.max_observation_chars
    )
    self._environments = dict(environments or {})
    self._family_kwargs = dict(family_kwargs or {})
    self._usage = EngineUsage(getattr(getattr(self.engine, "engine", None), "num_slots", None))

    self._lock = threading.Lock()
    self._ready_cond = threading.Condition(self._lock)
    self._admission = AdmissionControl(cfg.max_staleness, cfg.groups_per_batch, version)
    self._ready: list[_GroupState] = []
    self._consumed: list[str] = []
    self._skip: collections.Counter = collections.Counter()
    self._fatal: Optional[BaseException] = None
    self._exhausted = False
    self._live_unfinished = (
        0  # admitted groups not yet in the ready buffer (in flight or re-running)
    )
    self._failed_in_a_row = 0
    self._counters = collections.Counter()
    self._terminations = collections.Counter()
    self._staleness_hist = collections.Counter()
    self._tool_seconds = self._generate_seconds = 0.0
    self._episodes_in_flight = 0
    self._next_group_id = 0
    self._started_at: Optional[float] = None

    self._thread: Optional[threading.Thread] = None
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._wake: Optional[asyncio.Event] = None
    self._stopping = False
    self._tasks_running: set[asyncio.Task] = set()
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max(2, cfg.max_concurrent_episodes), thread_name_prefix="rollout-sandbox"
    )

  # ---------------------------------------------------------------------------------- lifecycle

  def start(self) -> "RolloutPool":
    if self._thread is not None:
      raise RuntimeError("RolloutPool.start: already started")
    ready = threading.Event()
    self._started_at = time.monotonic()
    self._usage.reset()
    self._thread = threading.Thread(
        target=self._thread_main, args=(ready,), name="rollout-pool", daemon=True
    )
    self._thread.start()
    ready.wait()
    return self

  def stop(self) -> None:
    """Cancel every episode (closing their engine and sandbox sessions) and end the loop thread."""
    if self._thread is None or self._stopping:
      return
    self._stopping = True
    if self._loop is not None and self._loop.is_running():
      self._loop.call_soon_threadsafe(self._wake.set)
    self._thread.join()
    self._executor.shutdown(wait=False)
    with self._lock:
      self._ready_cond.notify_all()

  def __enter__(self) -> "RolloutPool":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  # ---------------------------------------------------------------------------------- trainer API

  def publish_version(self, version: int) -> None:
    """The trainer made `version` the engine's weights (call right after engine.update_params)."""
    with self._lock:
      self._admission.publish(int(version))
      self._ready_cond.notify_all()
    self._poke()

  def get_groups(self, num_groups: int, timeout_s: Optional[float] = None) -> list[Group]:
    """Blocks until `num_groups` fresh groups are ready and returns them (first finished first).

    Every token of every returned group was sampled by a version >= current - max_staleness.
    Returns fewer (possibly none) only when the task iterator is exhausted and nothing is left
    in flight. Raises TimeoutError after `timeout_s`, RolloutError if the pool cannot deliver.
    """
    if num_groups < 1:
      raise ValueError(f"RolloutPool.get_groups: expected num_groups >= 1, found {num_groups}")
    if self._thread is None:
      raise RuntimeError("RolloutPool.get_groups: call start() first")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with self._ready_cond:
      while True:
        if self._fatal is not None:
          raise RolloutError(f"rollout pool failed: {self._fatal}") from self._fatal
        self._recheck_staleness_locked()
        if len(self._ready) >= num_groups or (self._exhausted and self._live_unfinished == 0):
          taken, self._ready = self._ready[:num_groups], self._ready[num_groups:]
          return [self._deliver_locked(gs) for gs in taken]
        if self._stopping:
          raise RolloutError("RolloutPool.get_groups: the pool was stopped")
        if self._live_unfinished == 0 and not self._admission.can_admit():
          raise RolloutError(
              f"RolloutPool.get_groups: asked for {num_groups} groups, {len(self._ready)} ready and none "
              f"in flight; admission is full ({self._admission.live_groups} of "
              f"{self._admission.capacity} groups at version {self._admission.version}): call "
              f"publish_version after each batch of {self._admission.groups_per_batch} groups"
          )
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
          raise TimeoutError(
              f"RolloutPool.get_groups: {len(self._ready)} of {num_groups} groups ready "
              f"after {timeout_s:g} s"
          )
        self._ready_cond.wait(remaining)

  def consumed_task_ids(self) -> list[str]:
    with self._lock:
      return list(self._consumed)

  def restore_consumed(self, ids: Sequence[str]) -> None:
    if self._thread is not None:
      raise RuntimeError("RolloutPool.restore_consumed: call before start()")
    self._consumed = list(ids)
    self._skip = collections.Counter(ids)

  def stats(self) -> dict:
    with self._lock:
      wall = time.monotonic() - self._started_at if self._started_at else 0.0
      done = self._counters["episodes_finished"]
      return {
          "version": self._admission.version,
          "step": self._admission.step,
          "capacity_groups": self._admission.capacity,
          "admitted_groups": self._admission.live_groups,
          "episodes_in_flight": self._episodes_in_flight,
          "groups_ready": len(self._ready),
          "groups_delivered": self._counters["groups_delivered"],
          "groups_dropped": self._counters["groups_dropped"],
          "episodes_finished": done,
          "episodes_per_s": done / wall if wall else 0.0,
          "episode_errors": self._counters["episode_errors"],
          "stale_restarts": self._counters["stale_restarts"],
          "terminations": dict(self._terminations),
          "staleness_histogram": dict(sorted(self._staleness_hist.items())),
          "tool_seconds": self._tool_seconds,
          "generate_seconds": self._generate_seconds,
          "wall_seconds": wall,
          **self._usage.summary(),
      }

  # ---------------------------------------------------------------------------------- delivery (locked)

  def _kept(self, gs: _GroupState) -> list[TokenTrajectory]:
    """The group's trajectories after the error policy ("exclude" drops failed episodes)."""
    if self.cfg.error_policy == "exclude":
      return [t for t in gs.trajectories if t.termination != "error"]
    return list(gs.trajectories)

  def _recheck_staleness_locked(self) -> None:
    fresh = []
    for gs in self._ready:
      if all(self._admission.is_fresh(t.min_version) for t in self._kept(gs)):
        fresh.append(gs)
      else:
        self._live_unfinished += 1
        self._loop.call_soon_threadsafe(self._rerun_stale, gs)
    self._ready = fresh

  def _deliver_locked(self, gs: _GroupState) -> Group:
    self._consumed.append(gs.instance.instance_id)
    self._counters["groups_delivered"] += 1
    kept = self._kept(gs)
    for t in kept:
      if t.min_version >= 0:
        self._staleness_hist[self._admission.version - t.min_version] += 1
    return Group(gs.instance.task_name, gs.instance.instance_id, gs.group_id, kept)

  # ---------------------------------------------------------------------------------- the loop thread

  def _thread_main(self, ready: threading.Event) -> None:
    try:
      asyncio.run(self._main(ready))
    except BaseException as exc:  # noqa: BLE001 - reported to get_groups
      log.exception("rollout pool: the loop died")
      with self._lock:
        self._fatal = exc
        self._ready_cond.notify_all()
    finally:
      ready.set()

  def _poke(self) -> None:
    loop = self._loop
    if loop is not None and not loop.is_closed():
      try:
        loop.call_soon_threadsafe(self._wake.set)
      except RuntimeError:  # the loop closed in between
        pass

  async def _main(self, ready: threading.Event) -> None:
    self._loop = asyncio.get_running_loop()
    self._wake = asyncio.Event()
    self._slots = asyncio.Semaphore(self.cfg.max_concurrent_episodes)
    ready.set()
    try:
      while not self._stopping:
        self._admit_groups()
        await self._wake.wait()
        self._wake.clear()
    finally:
      tasks = list(self._tasks_running)
      for task in tasks:
        task.cancel()
      await asyncio.gather(*tasks, return_exceptions=True)

  def _admit_groups(self) -> None:
    while not self._stopping and not self._exhausted:
      with self._lock:
        if self._fatal is not None or not self._admission.can_admit():
          return
      instance = self._next_instance()
      if instance is None:
        with self._lock:
          self._exhausted = True
          self._ready_cond.notify_all()
        return
      G = self.cfg.group_size
      gs = _GroupState(
          self._next_group_id,
          instance,
          self._environment(instance.task_name),
          [None] * G,
          [0] * G,
          pending=G,
      )
      self._next_group_id += 1
      with self._lock:
        self._admission.on_admit()
        self._live_unfinished += 1
      for index in range(G):
        self._spawn(gs, index)

  def _next_instance(self) -> Optional[TaskInstance]:
    for instance in self._tasks:
      if self._skip[instance.instance_id] > 0:
        self._skip[instance.instance_id] -= 1
        continue
      return instance
    return None

  def _environment(self, task_name: str) -> FamilyEnvironment:
    if task_name not in self._environments:
      family = get_family(task_name, **self._family_kwargs.get(task_name, {}))
      self._environments[task_name] = family_environment(family, self.cfg.extra_tools, self._pcfg)
    return self._environments[task_name]

  def _spawn(self, gs: _GroupState, index: int) -> None:
    task = self._loop.create_task(self._episode(gs, index))
    self._tasks_running.add(task)
    task.add_done_callback(self._tasks_running.discard)

  def _too_stale(self, min_version: int) -> bool:
    with self._lock:
      return not self._admission.is_fresh(min_version)

  async def _episode(self, gs: _GroupState, index: int) -> None:
    async with self._slots:
      with self._lock:
        self._episodes_in_flight += 1
      runner = ToolRunner(
          self.sandbox,
          gs.env.tools,
          self._executor,
          self.cfg.tool_watchdog_s,
          setup_code=sandbox_setup_code(gs.instance),
      )
      with self._lock:
        published_at_start = self._admission.version
      try:
        trajectory = await run_token_episode(
            self._usage.wrap(self.engine),
            runner,
            self.renderer,
            gs.env,
            gs.instance,
            self.cfg,
            group_id=gs.group_id,
            sample_index=index,
            attempt=gs.attempts[index],
            should_abort=self._too_stale,
        )
      except EpisodeAborted as aborted:
        self._check_engine_follows(published_at_start, aborted.oldest_version)
        trajectory = None
      except asyncio.CancelledError:
        raise
      except Exception as exc:  # noqa: BLE001 - a bug in one episode must not stall its group
        log.exception("rollout pool: episode %s/%d raised", gs.instance.instance_id, index)
        trajectory = self._failed_trajectory(gs, exc)
      finally:
        with self._lock:
          self._episodes_in_flight -= 1
        await runner.close()
    if trajectory is not None and trajectory.min_version >= 0:
      self._check_engine_follows(published_at_start, trajectory.min_version)
    self._episode_done(gs, index, trajectory)

  def _check_engine_follows(self, published: int, sampled: int) -> None:
    """An episode started after `published` was published can only see versions >= published,
    unless the engine was not given those weights: then every restart would be stale again
    (a livelock), so the pool fails loudly instead."""
    if sampled < published:
      with self._lock:
        if self._fatal is None:
          self._fatal = RolloutError(
              f"the engine sampled version {sampled} after version {published} was published; call "
              f"engine.update_params(params, {published}) before pool.publish_version({published})"
          )
        self._ready_cond.notify_all()

  def _failed_trajectory(self, gs: _GroupState, exc: BaseException) -> TokenTrajectory:
    messages = [{"role": "system", "content": gs.env.system}] if self.cfg.use_system_prompt else []
    messages.append({"role": "user", "content": gs.instance.prompt})
    ids = self.renderer.prompt_ids(messages)
    T = len(ids)
    return TokenTrajectory(
        gs.instance.task_name,
        gs.instance.instance_id,
        gs.group_id,
        ids,
        np.zeros(T, np.int32),
        np.zeros(T, np.float32),
        np.full(T, -1, np.int32),
        T,
        0.0,
        0.0,
        0.0,
        0,
        "error",
        0.0,
        0.0,
        messages,
        False,
        error=f"{type(exc).__name__}: {exc}",
    )

  def _episode_done(
      self, gs: _GroupState, index: int, trajectory: Optional[TokenTrajectory]
  ) -> None:
    with self._lock:
      excluded = (
          trajectory is not None
          and trajectory.termination == "error"
          and self.cfg.error_policy == "exclude"
      )
      fresh = trajectory is not None and (
          excluded or self._admission.is_fresh(trajectory.min_version)
      )
      if not fresh:
        self._counters["stale_restarts"] += 1
      else:
        self._counters["episodes_finished"] += 1
        self._terminations[trajectory.termination] += 1
        self._counters["episode_errors"] += trajectory.termination == "error"
        self._tool_seconds += trajectory.tool_seconds
        self._generate_seconds += trajectory.generate_seconds
    if not fresh:
      if not self._stopping and self._fatal is None:
        gs.attempts[index] += 1
        self._spawn(gs, index)
      return
    gs.trajectories[index] = trajectory
    gs.pending -= 1
    if gs.pending == 0:
      self._group_finished(gs)

  def _group_finished(self, gs: _GroupState) -> None:
    all_failed = all(t.termination == "error" for t in gs.trajectories)
    kept = self._kept(gs)
    with self._lock:
      self._live_unfinished -= 1
      if all_failed:
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= self.cfg.max_failed_groups_in_a_row and self._fatal is None:
          errors = "; ".join(sorted({t.error or "?" for t in gs.trajectories}))
          self._fatal = RolloutError(
              f"{self._failed_in_a_row} groups in a row had every episode fail; "
              f"last errors: {errors}"
          )
      else:
        self._failed_in_a_row = 0
      if not kept:
        self._admission.on_drop()
        self._counters["groups_dropped"] += 1
        self._consumed.append(gs.instance.instance_id)
      else:
        self._ready.append(gs)
      self._ready_cond.notify_all()
    self._wake.set()

  def _rerun_stale(self, gs: _GroupState) -> None:
    """In the loop, for a finished group found stale at delivery: re-run its stale kept episodes."""
    with self._lock:
      stale = [
          i
          for i, t in enumerate(gs.trajectories)
          if not (self.cfg.error_policy == "exclude" and t.termination == "error")
          and not self._admission.is_fresh(t.min_version)
      ]
      self._counters["stale_restarts"] += len(stale)
    if not stale:  # cannot happen (versions only grow), but a group must never hang
      self._group_finished(gs)
      return
    gs.pending = len(stale)
    for i in stale:
      gs.attempts[i] += 1
      self._spawn(gs, i)
