"""Resource limits of a sandbox session and how a worker's death is explained to the agent."""

from __future__ import annotations

import dataclasses
import resource
import signal


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Per-session limits. Wall time is per run (`session.run(timeout_s=...)`), the rest are here.

  memory_mb: address-space cap (RLIMIT_AS) of every process of the session; an allocation past it
    fails (Python raises MemoryError, the namespace survives).
  cpu_time_s: CPU seconds each process of the session may use in total (RLIMIT_CPU); past it the
    kernel kills the process (SIGXCPU) and the session restarts with a fresh namespace.
  max_processes: processes + threads the session's uid may own at once (RLIMIT_NPROC); binds because
    every worker runs as its own throw-away uid, so one session's fork storm never starves another.
  max_output_bytes: bytes of stdout+stderr kept per run; the rest is counted and dropped.
  tmp_mb: size of the session's private tmpfs /tmp (its working directory lives there).
  """

  memory_mb: int = 4096
  cpu_time_s: int = 3600
  max_processes: int = 256
  max_output_bytes: int = 100_000
  tmp_mb: int = 1024

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"SandboxLimits.{field.name}: expected a positive int, found {value!r}")


def apply_rlimits(limits: SandboxLimits) -> None:
  """Set the kernel limits on the calling process (inherited by everything it starts)."""
  memory = limits.memory_mb * 1024 * 1024
  resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
  # soft < hard: the soft limit delivers SIGXCPU, whose default action ends the process with a
  # recognisable signal; the hard limit (SIGKILL) only backs it up if SIGXCPU is caught.
  resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_time_s, limits.cpu_time_s + 2))
  resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def describe_exit(returncode: int | None, limits: SandboxLimits) -> str:
  """Why a worker ended, in words for the agent. returncode: 128 + signum or -signum when killed."""
  if returncode is None:
    return "it stopped responding"
  signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
  if signum in signal.valid_signals():
    name = (
        signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"#{signum}"
    )
    if signum == signal.SIGXCPU:
      return f"it exceeded the CPU time limit of {limits.cpu_time_s} s ({name})"
    if signum == signal.SIGSEGV:
      return f"it crashed with a segmentation fault ({name}; e.g. a recursion too deep for the C stack)"
    return f"it was killed by signal {name}"
  return f"the process exited with status {returncode}"
