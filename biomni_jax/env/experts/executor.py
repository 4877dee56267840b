"""A trusted in-process executor with the sandbox session's interface, for scripted (trusted) code only.

`run(code, timeout_s)` executes Python in one persistent namespace pre-filled with the tool
functions and returns an object with .output, .timed_out, .error. There is no isolation and the
timeout is not enforced: never hand it model-written code (use biomni_jax.env.sandbox for that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import traceback

from biomni_jax.env.tools import resolve_all, tool_specs


@dataclasses.dataclass
class ExecResult:
  output: str
  timed_out: bool = False
  error: str | None = None


class InProcessExecutor:
  """setup_code: trusted code run first (e.g. tasks.sandbox_setup_code(instance)); raises if it fails."""

  def __init__(self, tool_names: list[str] | None = None, setup_code: str = ""):
    self.namespace: dict = {"__name__": "__session__"}
    self.namespace.update(resolve_all(tool_specs(tool_names)))
    if setup_code:
      exec(compile(setup_code, "<setup>", "exec"), self.namespace)

  def run(self, code: str, timeout_s: float = 600.0) -> ExecResult:
    buffer = io.StringIO()
    error = None
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
      try:
        exec(compile(code, "<execute>", "exec"), self.namespace)
      except Exception as exc:  # reported to the agent like the sandbox does
        traceback.print_exc(file=buffer)
        error = f"{type(exc).__name__}: {exc}"
    return ExecResult(buffer.getvalue(), False, error)

  def close(self) -> None:
    self.namespace.clear()
