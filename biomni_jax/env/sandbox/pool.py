"""SandboxPool: pre-started worker processes, one per open session; SandboxSession: one namespace.

    with SandboxPool(max_workers=4) as pool:
        session = pool.open(tools=["biomni_jax.env.tools.hpo:get_hpo_names"], setup_code="import math")
        result = session.run("print(get_hpo_names(['HP:0001250']))", timeout_s=60)
        result = await session.arun("x = 1", timeout_s=60)   # from asyncio code
        session.close()

Capacity: at most `max_workers` worker processes exist, and each open session owns one; `open`
blocks while all are taken. Spawner threads keep one ready worker per free slot, so opening a
session only imports its tools, confines the worker and runs its setup code. A worker takes a few
hundred ms of CPU to start (interpreter, namespaces, preloads) and sessions are one-shot, so starts run
`spawn_threads` at a time: serial starts would cap a pool at a few sessions per second.

Failure containment: a run that overstays its wall time, or a worker that dies (out of CPU time,
segfault, os._exit, a signal), costs that session its namespace and nothing else: the run returns an
error result, the worker is killed with its whole process group / pid namespace, the next run of the
session starts in a fresh worker (same tools and setup code) with a note saying so, and the pool
refills the slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pwd
import random
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from biomni_jax.env.sandbox.handle import ExecResult, SandboxError, WorkerHandle, WorkerSpec
from biomni_jax.env.sandbox.limits import SandboxLimits

TOOL_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
RESTART_NOTE = (
    "[Note: the execution environment was restarted after the previous execution failed; "
    "variables, imports and files from earlier steps are gone.]\n"
)
# Throw-away uids/gids, far above any real account: each worker gets its own, so RLIMIT_NPROC and
# file permissions separate sessions from each other as well as from root.
UID_RANGE = (2_000_000, 3_000_000)


def default_hidden_paths() -> tuple[str, ...]:
  """The project checkout (or, for a non-editable install, the installed package directory)."""
  package_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  project_root = os.path.dirname(package_dir)
  markers = ("setup.py", "pyproject.toml")
  if any(os.path.exists(os.path.join(project_root, marker)) for marker in markers):
    return (project_root,)
  return (package_dir,)


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """The only environment a worker sees: no variable is inherited from the pool's process."""
  bin_dir = os.path.dirname(sys.executable)
  env = {
      "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG": "C.UTF-8",
      "LC_ALL": "C.UTF-8",
      "PYTHONDONTWRITEBYTECODE": "1",
      "MPLBACKEND": "Agg",
  }
  env.update(extra or {})
  return env


class SandboxSession:
  """One persistent namespace in one worker. Not safe for concurrent runs (they are serialised)."""

  def __init__(self, pool: SandboxPool, tools: list[str], setup_code: str, worker: WorkerHandle):
    self._pool, self._tools, self._setup_code = pool, tools, setup_code
    self._worker: WorkerHandle | None = worker
    self._lock = threading.Lock()
    self.closed = False

  def run(self, code: str, timeout_s: float = 600.0) -> ExecResult:
    """Run code (Python, or `#!BASH` / `#!R` on the first line) in this session's namespace."""
    if not isinstance(code, str):
      raise TypeError(f"SandboxSession.run: expected code as str, found {type(code).__name__}")
    if not timeout_s > 0:
      raise ValueError(f"SandboxSession.run: expected timeout_s > 0, found {timeout_s!r}")
    with self._lock:
      if self.closed:
        raise SandboxError("SandboxSession.run: the session is closed")
      note = ""
      if self._worker is None:
        try:
          worker = self._pool._open_worker(self._tools, self._setup_code)
        except SandboxError as e:
          return ExecResult("", error=f"the execution environment could not be restarted: {e}")
        if self.closed:  # closed by another thread while the new worker was opening
          self._pool._release_worker(worker)
          raise SandboxError("SandboxSession.run: the session was closed")
        self._worker, note = worker, RESTART_NOTE
      result = self._worker.execute(code, timeout_s)
      if not self._worker.alive:
        self._pool._release_worker(self._worker)
        self._worker = None
    if note:
      result = ExecResult(note + result.output, result.timed_out, result.error)
    return result

  async def arun(self, code: str, timeout_s: float = 600.0) -> ExecResult:
    """`run` on the pool's thread executor, for asyncio callers."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(self._pool._executor, self.run, code, timeout_s)

  def close(self) -> None:
    """Kill the worker (every process the session started dies with it); idempotent.

    Prompt even while another thread is inside `run`: the kill comes first, which makes that
    run return (as a crash) and release the run lock.
    """
    if self.closed:
      return
    self.closed = True
    worker = self._worker
    if worker is not None:
      worker.kill()
    with self._lock:
      worker, self._worker = self._worker, None
    if worker is not None:
      self._pool._release_worker(worker)
    self._pool._forget_session(self)

  def __enter__(self) -> SandboxSession:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class SandboxPool:
  """Pre-started sandbox workers serving up to `max_workers` sessions at once.

  limits: per-session resource limits (SandboxLimits).
  hidden_paths: directories made invisible to session code; default: the project checkout. Add
    any directory holding answers or secrets (e.g. an evaluation data directory).
  preload: modules every worker imports when it starts (before any session), so that opening a
    session with tools from them costs no import time (tool modules that load tables, typically).
  env: extra environment variables for sessions (nothing else is inherited).
  open_timeout_s: how long `open` waits for a free worker plus the session's own setup.
  spawn_threads: workers started concurrently (at most max_workers).
  """

  def __init__(
      self,
      max_workers: int = 4,
      *,
      limits: SandboxLimits = SandboxLimits(),
      hidden_paths: Sequence[str] | None = None,
      preload: Sequence[str] = (),
      env: Mapping[str, str] | None = None,
      open_timeout_s: float = 120.0,
      start_timeout_s: float = 30.0,
      python: str | None = None,
      spawn_threads: int = 2,
  ):
    if not isinstance(max_workers, int) or max_workers < 1:
      raise ValueError(f"SandboxPool: expected max_workers >= 1, found {max_workers!r}")
    if not isinstance(spawn_threads, int) or spawn_threads < 1:
      raise ValueError(f"SandboxPool: expected spawn_threads >= 1, found {spawn_threads!r}")
    self.max_workers = max_workers
    self.limits = limits
    self.open_timeout_s = open_timeout_s
    hidden = default_hidden_paths() if hidden_paths is None else tuple(hidden_paths)
    self._spec = WorkerSpec(
        limits=limits,
        hidden_paths=tuple(os.path.abspath(p) for p in hidden),
        preload=tuple(preload),
        env=scrubbed_env(env),
        python=python or sys.executable,
        start_timeout_s=start_timeout_s,
    )
    self._cond = threading.Condition()
    self._idle: list[WorkerHandle] = []
    self._owned = 0  # workers held by sessions
    self._spawning = 0  # workers being started
    self._sessions: set[SandboxSession] = set()
    self._uids: set[int] = set()
    self._closing = False
    self._start_error: str | None = None
    self.isolation: dict = {}
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers, thread_name_prefix="sandbox-run"
    )
    # Workers are spawned only from these threads: they live as long as the pool, and workers die
    # with the thread that started them (PR_SET_PDEATHSIG), hence with the pool's process.
    self._spawners = [
        threading.Thread(target=self._spawn_loop, name=f"sandbox-spawner-{i}", daemon=True)
        for i in range(min(spawn_threads, max_workers))
    ]
    for thread in self._spawners:
      thread.start()

  # --- public ---------------------------------------------------------------------------------

  def open(self, tools: Sequence[str] = (), setup_code: str = "") -> SandboxSession:
    """A new session whose namespace holds each tool ("module:function") under its function name."""
    if isinstance(tools, str):
      raise TypeError(
          f"SandboxPool.open: expected a sequence of 'module:function' strings, found the str {tools!r}"
      )
    tools = list(tools)
    for spec in tools:
      if not isinstance(spec, str) or not TOOL_SPEC.match(spec):
        raise ValueError(f"SandboxPool.open: expected tools as 'module:function', found {spec!r}")
    with self._cond:
      if self._closing:
        raise SandboxError("SandboxPool.open: the pool is closed")
      if len(self._sessions) >= self.max_workers:
        deadline = time.monotonic() + self.open_timeout_s
        while len(self._sessions) >= self.max_workers and not self._closing:
          if not self._cond.wait(deadline - time.monotonic()):
            raise SandboxError(
                f"SandboxPool.open: all {self.max_workers} workers stayed busy "
                f"for {self.open_timeout_s:g} s"
            )
      session = SandboxSession(self, tools, setup_code, worker=None)  # type: ignore[arg-type]
      self._sessions.add(session)
    try:
      session._worker = self._open_worker(tools, setup_code)
    except BaseException:
      self._forget_session(session)
      raise
    return session

  def close(self) -> None:
    """Kill every worker, idle or in a session; open sessions become unusable."""
    with self._cond:
      if self._closing:
        return
      self._closing = True
      sessions = list(self._sessions)
      self._cond.notify_all()
    for session in sessions:
      session.close()
    for thread in self._spawners:
      thread.join()
    with self._cond:
      idle, self._idle = self._idle, []
    for worker in idle:
      worker.discard()
    self._executor.shutdown(wait=False)

  def __enter__(self) -> SandboxPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def idle_workers(self) -> int:
    with self._cond:
      return len(self._idle)

  # --- used by sessions -----------------------------------------------------------------------

  def _open_worker(self, tools: list[str], setup_code: str) -> WorkerHandle:
    deadline = time.monotonic() + self.open_timeout_s
    while True:
      with self._cond:
        while not self._idle:
          if self._closing:
            raise SandboxError("SandboxPool: the pool is closed")
          if not self._cond.wait(deadline - time.monotonic()):
            raise SandboxError(
                f"SandboxPool: no worker became ready within {self.open_timeout_s:g} s; "
                f"last start error: {self._start_error}"
            )
        worker = self._idle.pop()
        self._owned += 1
      if worker.process.poll() is None:
        break
      self._release_worker(worker)  # died while idle: the spawner replaces it
    try:
      worker.open(tools, setup_code, max(1.0, deadline - time.monotonic()))
    except BaseException:
      self._release_worker(worker)
      raise
    return worker

  def _release_worker(self, worker: WorkerHandle) -> None:
    """Stop counting a session's worker (once) and free its processes and pipes."""
    with self._cond:
      if worker.released:
        return
      worker.released = True
      self._owned -= 1
      self._uids.discard(worker.uid)
      self._cond.notify_all()
    worker.discard()

  def _forget_session(self, session: SandboxSession) -> None:
    with self._cond:
      self._sessions.discard(session)
      self._cond.notify_all()

  # --- spawner thread -------------------------------------------------------------------------

  def _fresh_uid(self) -> int:
    while True:
      uid = random.randrange(*UID_RANGE)
      if uid in self._uids:
        continue
      try:
        pwd.getpwuid(uid)
      except KeyError:
        self._uids.add(uid)
        return uid

  def _spawn_loop(self) -> None:
    failures = 0
    while True:
      with self._cond:
        while (
            not self._closing and len(self._idle) + self._owned + self._spawning >= self.max_workers
        ):
          self._cond.wait()
        if self._closing:
          return
        uid = self._fresh_uid()
        self._spawning += 1
      try:
        worker = WorkerHandle(self._spec, uid)
      except Exception as e:  # keep serving: report through open(), retry with backoff
        with self._cond:
          self._spawning -= 1
          self._uids.discard(uid)
          self._start_error = str(e)
          self._cond.notify_all()
        failures += 1
        with self._cond:  # back off, but wake at once if the pool closes
          self._cond.wait_for(lambda: self._closing, timeout=min(5.0, 0.1 * 2**failures))
        continue
      failures = 0
      with self._cond:
        self._spawning -= 1
        self.isolation = worker.isolation
        if self._closing:
          closing = True
        else:
          closing = False
          self._idle.append(worker)
          self._cond.notify_all()
      if closing:
        worker.discard()
        return
