"""A sandbox worker process: one session's persistent namespace, run behind namespaces and limits.

Started by the pool as `python -I -m biomni_jax.env.sandbox.worker CONFIG_JSON` with a scrubbed
environment, stdin /dev/null, fd 1 and 2 on the output pipe and two extra fds for requests/replies.
Requests and replies are JSON lines:
  worker -> pool  {"event": "ready", "isolation": {...}}          once started (pre-start)
  pool -> worker  {"op": "open", "tools": [...], "setup_code": s}  -> {"event": "opened", "error": e}
  pool -> worker  {"op": "run", "code": s}                         -> {"event": "done", "error": e}
Everything the code prints (tracebacks included) goes to the output pipe, in order; the pool keeps
the wall clock and kills the worker when a run overstays.

Process layout when started as root (see isolation.py): outer -> init (pid 1 of new pid/mount/net
namespaces, reaps orphans) -> worker (pid 2). Tools are imported at "open" while still root, then the
project's files are hidden, limits set and privileges dropped, all before any session code runs.
"""

from __future__ import annotations

import builtins
import importlib
import json
import linecache
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback

from biomni_jax.env.sandbox import guard, isolation, limits as limits_lib

WORKDIR_IN_NAMESPACE = "/tmp/work"
SANDBOX_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
R_MISSING = (
    "R is not available in this sandbox: no `Rscript` executable was found on PATH. "
    "Use Python, or a `#!BASH` block for shell commands."
)


def user_traceback(e: BaseException) -> str:
  """The traceback as Python prints it, without the sandbox's own frames (worker, guard)."""
  summary = traceback.TracebackException(type(e), e, e.__traceback__)
  frames = [f for f in summary.stack if not f.filename.startswith(SANDBOX_DIR)]
  summary.stack = traceback.StackSummary.from_list(frames)
  return "".join(summary.format())


def _exit_code(status: int) -> int:
  """waitpid status -> shell-style code (128 + signal when killed by one)."""
  if os.WIFSIGNALED(status):
    return 128 + os.WTERMSIG(status)
  return os.waitstatus_to_exitcode(status)


def _wait_for(child: int) -> None:
  """Reap children until `child` ends, then exit with its code (never returns)."""
  while True:
    pid, status = os.wait()
    if pid == child:
      os._exit(_exit_code(status))


def _close_channel_fds(config: dict) -> None:
  for fd in (config["request_fd"], config["reply_fd"], 1, 2):
    os.close(fd)
  devnull = os.open(os.devnull, os.O_RDWR)
  os.dup2(devnull, 1)
  os.dup2(devnull, 2)


def runtime_paths() -> list[str]:
  """Directories the Python runtime (interpreter, stdlib, site-packages) is read from."""
  paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
  paths.add(os.path.dirname(os.path.realpath(sys.executable)))
  return sorted(p for p in paths if not any(p != q and p.startswith(q + os.sep) for q in paths))


def enter_namespaces(config: dict) -> dict:
  """Become pid 2 of fresh pid/mount/net namespaces (root only); returns what was achieved."""
  report = {"namespaces": False, "uid_drop": os.geteuid() == 0, "network_guard": True}
  if os.geteuid() != 0:
    report["why_not"] = "not started as root: no namespaces, no privilege drop"
    return report
  try:
    isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWNET | isolation.CLONE_NEWPID)
  except OSError as e:
    report["why_not"] = str(e)
    return report
  isolation.make_mounts_private()
  init = os.fork()
  if init:  # outer: stays in the host pid namespace only to report how init ended
    _close_channel_fds(config)
    _wait_for(init)
  isolation.set_parent_death_signal(signal.SIGKILL)  # outer killed -> init killed -> namespace gone
  report["init_host_pid"] = int(os.readlink("/proc/self"))  # the host's /proc, not yet replaced
  isolation.mount_proc()
  # The runtime and the not-yet-hidden project must stay importable even when they live under /tmp.
  keep = tuple(runtime_paths()) + tuple(config["hidden_paths"])
  for path in isolation.WORLD_WRITABLE_DIRS:
    if os.path.isdir(path):
      isolation.mount_private_tmp(path, config["limits"]["tmp_mb"], keep=keep)
  worker = os.fork()
  if worker:  # init: pid 1, reaps orphans, ends (taking the namespace with it) when the worker does
    _close_channel_fds(config)
    _wait_for(worker)
  report["namespaces"] = True
  return report


def _add_account(uid: int, gid: int, home: str) -> None:
  """Give the throw-away uid a name (`whoami`, pwd.getpwuid) through copies of /etc/passwd and
  /etc/group with one more line each, bind-mounted over the originals in this mount namespace."""
  directory = tempfile.mkdtemp(
      prefix=".accounts-", dir="/tmp"
  )  # root-owned, under the private /tmp
  os.chmod(directory, 0o755)
  for name, line in (
      ("passwd", f"sandbox:x:{uid}:{gid}:sandbox:{home}:/bin/bash"),
      ("group", f"sandbox:x:{gid}:"),
  ):
    with open(f"/etc/{name}") as f:
      text = f.read()
    copy = os.path.join(directory, name)
    with open(copy, "w") as f:
      f.write(text.rstrip("\n") + "\n" + line + "\n")
    os.chmod(copy, 0o644)
    isolation.mount(copy, f"/etc/{name}", None, isolation.MS_BIND)


class Worker:

  def __init__(self, config: dict):
    self.config = config
    self.limits = limits_lib.SandboxLimits(**config["limits"])
    self.requests = os.fdopen(config["request_fd"], "rb")
    self.reply_fd = config["reply_fd"]
    self.namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    self.runs = 0
    self.workdir = ""
    self.namespaced = False

  def reply(self, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
      data = data[os.write(self.reply_fd, data) :]

  def serve(self, report: dict) -> None:
    self.namespaced = report["namespaces"]
    for module_name in self.config["preload"]:  # e.g. tool modules with large tables
      importlib.import_module(module_name)
    init_host_pid = report.pop("init_host_pid", None)
    self.reply({"event": "ready", "isolation": report, "init_host_pid": init_host_pid})
    for line in self.requests:
      request = json.loads(line)
      if request["op"] == "open":
        self.reply({"event": "opened", "error": self.open(request["tools"], request["setup_code"])})
      elif request["op"] == "run":
        try:
          error = self.run(request["code"])
        except Exception as e:  # e.g. MemoryError starting bash near the memory cap
          error = f"the sandbox could not run the code: {type(e).__name__}: {e}"
        self.reply({"event": "done", "error": error})
      else:
        raise ValueError(f"worker: unknown op {request['op']!r} in request {line[:200]!r}")

  # --- session open: everything privileged happens here, before any session code runs ---------

  def open(self, tools: list[str], setup_code: str) -> str | None:
    for spec in tools:
      module_name, _, function_name = spec.partition(":")
      try:
        self.namespace[function_name] = getattr(importlib.import_module(module_name), function_name)
      except Exception as e:  # the pool reports it as a failed open
        return f"tool {spec!r} could not be imported: {type(e).__name__}: {e}"
    self._confine()
    if setup_code:
      return self.run(setup_code)
    return None

  def _confine(self) -> None:
    uid, gid = self.config["uid"], self.config["gid"]
    root = os.geteuid() == 0
    if self.namespaced:
      for path in self.config["hidden_paths"]:
        if os.path.isdir(path):
          isolation.hide_path(path)
      isolation.expose_through_closed_ancestors(runtime_paths(), staging_dir="/tmp")
      _add_account(uid, gid, WORKDIR_IN_NAMESPACE)
      self.workdir = WORKDIR_IN_NAMESPACE
      os.makedirs(self.workdir, mode=0o700)
      tmpdir = "/tmp"
    else:
      self.workdir = tempfile.mkdtemp(prefix="biomni_sandbox_")
      tmpdir = self.workdir
    if root:
      os.chown(self.workdir, uid, gid)
    os.environ.clear()
    os.environ.update(self.config["env"])
    os.environ.update(HOME=self.workdir, TMPDIR=tmpdir, USER="sandbox", LOGNAME="sandbox")
    tempfile.tempdir = tmpdir
    limits_lib.apply_rlimits(self.limits)
    if root:
      isolation.set_no_new_privs()
      isolation.drop_privileges(uid, gid)
    os.chdir(self.workdir)
    os.umask(0o077)
    guard.install_network_guard()

  # --- runs -------------------------------------------------------------------------------------

  def run(self, code: str) -> str | None:
    self.runs += 1
    first_line, _, rest = code.lstrip().partition("\n")
    marker = first_line.strip().upper()
    try:
      if marker == "#!BASH":
        return self._run_process(["bash"], rest, ".sh", "bash")
      if marker == "#!R":
        if shutil.which("Rscript") is None:
          print(R_MISSING, file=sys.stderr)
          return "R is not installed in this sandbox"
        return self._run_process(["Rscript"], rest, ".R", "Rscript")
      return self._run_python(code)
    finally:
      for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
          stream.flush()
        except Exception:
          pass

  def _run_python(self, code: str) -> str | None:
    filename = f"<execute #{self.runs}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
      exec(compile(code, filename, "exec"), self.namespace)
    except BaseException as e:  # SystemExit and KeyboardInterrupt too: the namespace lives on
      sys.stderr.write(user_traceback(e))
      return f"{type(e).__name__}: {e}"
    return None

  def _run_process(self, command: list[str], script: str, suffix: str, name: str) -> str | None:
    sys.stdout.flush()
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "w") as f:
      f.write(script)
    try:
      status = subprocess.run(
          command + [path], stdin=subprocess.DEVNULL, cwd=os.getcwd()
      ).returncode
    except OSError as e:
      return f"{name} could not be started: {e}"
    finally:
      os.unlink(path)
    return None if status == 0 else f"{name} exited with status {status}"


def main(argv: list[str]) -> None:
  config = json.loads(argv[1])
  # The pool's spawner thread lives as long as the pool: if the pool process dies, so do we.
  isolation.set_parent_death_signal(signal.SIGKILL)
  report = enter_namespaces(config)
  sys.stdout.reconfigure(line_buffering=True)
  sys.stderr.reconfigure(line_buffering=True)
  Worker(config).serve(report)


if __name__ == "__main__":
  main(sys.argv)
