"""One episode's code execution: a lazily opened sandbox session that never raises into the episode.

Every way the sandbox can fail becomes an observation the model reads, so one misbehaving episode
never stalls or kills the pool:
  - the code raised / timed out / crashed its worker: the sandbox's own ExecResult says so
    (a crashed worker is restarted by the session on the next run);
  - the session could not be opened or the run raised (SandboxError, closed pool): an error result;
  - the sandbox did not answer within timeout + watchdog: the session is closed (killing its
    processes), a timeout result is returned, and the next run opens a fresh session.

`sandbox` is anything with `open(tools=[...][, setup_code=...]) -> session` (setup_code only when the task has inputs), the session having `run(code, timeout_s)`
(blocking) or `arun(code, timeout_s)` (a coroutine) and `close()`: biomni_jax.env.sandbox.SandboxPool,
or a test fake.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Sequence

from biomni_jax.env.episode import result as exec_result

log = logging.getLogger(__name__)

RESTARTED_NOTE = (
    "[The execution environment was restarted; variables from earlier code are gone.]\n"
)


class ToolRunner:
  """Runs an episode's `<execute>` blocks in one sandbox session (opened on first use)."""

  def __init__(
      self,
      sandbox: Any,
      tools: Sequence[str],
      executor: concurrent.futures.Executor,
      watchdog_s: float = 30.0,
      setup_code: str = "",
  ):
    self._sandbox, self._tools, self._executor = sandbox, list(tools), executor
    self._open_kwargs = {"tools": self._tools, **({"setup_code": setup_code} if setup_code else {})}
    self._watchdog_s = float(watchdog_s)
    self._session = None
    self._lost_session = False

  async def _in_thread(self, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

  async def run(self, code: str, timeout_s: float):
    """An ExecResult-like object (output, timed_out, error); never raises except on cancellation."""
    note = ""
    try:
      if self._session is None:
        self._session = await self._in_thread(lambda: self._sandbox.open(**self._open_kwargs))
        if self._lost_session:
          note, self._lost_session = RESTARTED_NOTE, False
      session = self._session
      arun = getattr(session, "arun", None)
      call = (
          arun(code, timeout_s)
          if arun is not None
          else self._in_thread(session.run, code, timeout_s)
      )
      result = await asyncio.wait_for(call, timeout_s + self._watchdog_s)
    except asyncio.TimeoutError:
      log.warning(
          "tool runner: the sandbox did not answer within %.1f s; closing the session",
          timeout_s + self._watchdog_s,
      )
      await self._discard_session()
      return exec_result(note, timed_out=True)
    except Exception as exc:  # noqa: BLE001 - any sandbox failure is the model's observation
      await self._discard_session()
      return exec_result(
          note, error=f"the execution environment failed: {type(exc).__name__}: {exc}"
      )
    if note:
      return exec_result(note + (result.output or ""), result.timed_out, result.error)
    return result

  async def _discard_session(self) -> None:
    session, self._session = self._session, None
    if session is not None:
      self._lost_session = True
      try:
        await self._in_thread(session.close)
      except Exception:  # noqa: BLE001
        log.exception("tool runner: closing a failed sandbox session raised")

  async def close(self) -> None:
    session, self._session = self._session, None
    if session is not None:
      try:
        await self._in_thread(session.close)
      except Exception:  # noqa: BLE001
        log.exception("tool runner: closing the sandbox session raised")
