"""The pool's handle on one worker process: start it, open a session in it, run code, kill it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time

from biomni_jax.env.sandbox.channel import (
    ChannelClosed,
    ChannelTimeout,
    OutputCollector,
    ProtocolViolation,
    WorkerChannel,
)
from biomni_jax.env.sandbox.limits import SandboxLimits, describe_exit

WORKER_MODULE = "biomni_jax.env.sandbox.worker"


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """What one execution produced.

  output: captured stdout+stderr in order, with the traceback when the code raised; capped at
    SandboxLimits.max_output_bytes (a note says how much was dropped).
  timed_out: the run exceeded its wall time and the session's processes were killed.
  error: a one-line reason when the code failed (exception, non-zero bash status, crash), else None.
  """

  output: str
  timed_out: bool = False
  error: str | None = None


class SandboxError(RuntimeError):
  """The sandbox could not do what was asked (start a worker, open a session, use a closed one)."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
  """Everything a worker needs to start; identical for every worker of a pool except the uid."""

  limits: SandboxLimits
  hidden_paths: tuple[str, ...]
  preload: tuple[str, ...]
  env: dict[str, str]
  python: str
  start_timeout_s: float


class WorkerHandle:
  """A started worker. `alive` turns False once the process is known to be gone or killed."""

  def __init__(self, spec: WorkerSpec, uid: int):
    self.spec, self.uid = spec, uid
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    output_r, output_w = os.pipe()
    config = {
        "request_fd": request_r,
        "reply_fd": reply_w,
        "uid": uid,
        "gid": uid,
        "hidden_paths": list(spec.hidden_paths),
        "preload": list(spec.preload),
        "env": spec.env,
        "limits": dataclasses.asdict(spec.limits),
    }
    try:
      self.process = subprocess.Popen(
          [spec.python, "-I", "-m", WORKER_MODULE, json.dumps(config)],
          stdin=subprocess.DEVNULL,
          stdout=output_w,
          stderr=output_w,
          pass_fds=(request_r, reply_w),
          env=spec.env,
          cwd="/",
          start_new_session=True,  # its own process group: one killpg reaches all of it
      )
    except BaseException:
      for fd in (request_w, reply_r, output_r):
        os.close(fd)
      raise
    finally:
      for fd in (request_r, reply_w, output_w):
        os.close(fd)
    self.channel = WorkerChannel(request_w, reply_r, output_r)
    self.alive = True
    self.released = False  # set by the pool when it stops counting this worker
    self._kill_lock = threading.Lock()
    output = OutputCollector(spec.limits.max_output_bytes)
    try:
      ready = self.channel.receive(time.monotonic() + spec.start_timeout_s, output)
    except (ChannelClosed, ChannelTimeout) as e:
      self.discard()
      raise SandboxError(
          f"sandbox worker ({spec.python} -m {WORKER_MODULE}) did not start: "
          f"{type(e).__name__} {e}; exit: {describe_exit(self.process.returncode, spec.limits)}; "
          f"its output: {output.text()[-2000:]!r}"
      ) from None
    if ready.get("event") != "ready":
      self.discard()
      raise SandboxError(f"sandbox worker: expected a 'ready' message first, found {ready!r}")
    self.isolation: dict = ready.get("isolation", {})
    self._init_pidfd = self._open_init_pidfd(ready.get("init_host_pid"))

  def _open_init_pidfd(self, init_pid: int | None) -> int | None:
    """A pidfd on the namespace's init (the 'ready' message is sent before any session code runs,
    so it is trusted; the parent check makes sure the pid still names the outer process's child)."""
    if not isinstance(init_pid, int):
      return None
    pidfd = os.pidfd_open(init_pid)
    with open(f"/proc/{init_pid}/status") as f:
      parent = int(next(line for line in f if line.startswith("PPid:")).split()[1])
    if parent != self.process.pid:
      os.close(pidfd)
      self.discard()
      raise SandboxError(
          f"sandbox worker: init pid {init_pid} has parent {parent}, expected {self.process.pid}"
      )
    return pidfd

  def open(self, tools: list[str], setup_code: str, timeout_s: float) -> None:
    """Import tools, confine the worker, run setup_code; raises SandboxError on any failure."""
    output = OutputCollector(self.spec.limits.max_output_bytes)
    try:
      deadline = time.monotonic() + timeout_s
      self.channel.send({"op": "open", "tools": tools, "setup_code": setup_code}, deadline, output)
      reply = self.channel.receive(deadline, output)
    except (ChannelClosed, ChannelTimeout) as e:
      self.kill()
      raise SandboxError(
          f"sandbox session did not open: {type(e).__name__} {e}; output: {output.text()!r}"
      )
    if reply.get("error"):
      self.kill()
      raise SandboxError(
          f"sandbox session did not open: {reply['error']}; output: {output.text()!r}"
      )

  def execute(self, code: str, timeout_s: float) -> ExecResult:
    """Run code; on a timeout or a crash the worker is killed (check `alive` afterwards)."""
    output = OutputCollector(self.spec.limits.max_output_bytes)
    deadline = time.monotonic() + timeout_s
    try:
      self.channel.drain_output(output)  # what background work printed since the last run
      self.channel.send({"op": "run", "code": code}, deadline, output)
      reply = self.channel.receive(deadline, output)
    except ChannelTimeout:
      self.kill()
      return ExecResult(
          output.text(),
          timed_out=True,
          error=(
              f"the execution exceeded its time limit of {timeout_s:g} s and was stopped; "
              "its environment was restarted, so variables from earlier steps are gone"
          ),
      )
    except ChannelClosed as e:
      if isinstance(e, ProtocolViolation):
        self.kill()
        reason = f"it wrote to the sandbox's reply pipe: {e}"
      else:
        self.kill(grace_s=1.0)
        reason = describe_exit(self.process.returncode, self.spec.limits)
      return ExecResult(
          output.text(),
          error=(
              f"the execution environment crashed ({reason}); its variables are lost and "
              "the next execution starts in a fresh namespace"
          ),
      )
    self.channel.drain_output(output)
    return ExecResult(output.text(), error=reply.get("error"))

  def kill(self, grace_s: float = 0.0) -> None:
    """Kill the worker's process group (and with it, its whole pid namespace) and reap it.

    Safe from any thread and idempotent; it leaves the pipes open, so a run in progress in another
    thread sees the worker vanish instead of a closed file descriptor (see `discard`).
    grace_s: time to let a worker that is already exiting end by itself, so its exit code tells
    why it died (e.g. SIGXCPU) instead of our SIGKILL.
    """
    with self._kill_lock:
      self.alive = False
      self._kill(grace_s)

  def discard(self) -> None:
    """Kill, then close the pipes: only when no other thread can be using this worker."""
    self.kill()
    self.channel.close()

  def _kill(self, grace_s: float) -> None:
    if grace_s and self.process.poll() is None:
      try:
        self.process.wait(timeout=grace_s)
      except subprocess.TimeoutExpired:
        pass
    pidfd, self._init_pidfd = getattr(self, "_init_pidfd", None), None
    if pidfd is not None:
      # Killing the namespace's init makes the kernel kill and reap everything in it before init
      # itself ends; the outer process exits right after, so waiting for it means all is gone.
      if self.process.poll() is None:
        try:
          signal.pidfd_send_signal(pidfd, signal.SIGKILL)
          self.process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
          pass
      os.close(pidfd)
    if self.process.poll() is None:  # not yet reaped, so its pid (= its group id) is still ours
      try:
        os.killpg(self.process.pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass
    self.process.wait()
