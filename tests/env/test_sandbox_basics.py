"""The sandbox's contract: persistent namespaces, tools, languages, output capture, capacity."""

import asyncio
import os
import pathlib
import shutil
import signal
import tempfile
import threading
import time

import pytest

from biomni_jax.env.sandbox import ExecResult, SandboxError, SandboxLimits, SandboxPool
from biomni_jax.env.sandbox.channel import OutputCollector
from biomni_jax.env.sandbox.isolation import closed_ancestor
from biomni_jax.env.sandbox.limits import describe_exit
from biomni_jax.env.sandbox.pool import default_hidden_paths

LIMITS = SandboxLimits(
    memory_mb=1024, cpu_time_s=60, max_processes=64, max_output_bytes=20_000, tmp_mb=64
)


@pytest.fixture(scope="module")
def pool():
  with SandboxPool(max_workers=3, limits=LIMITS) as pool:
    yield pool


# --- pure pieces ---------------------------------------------------------------------------------


def test_output_collector_keeps_prefix_and_counts_the_rest():
  out = OutputCollector(limit=5)
  out.add(b"abc")
  out.add(b"defgh")
  out.add(b"ij")
  assert out.kept == b"abcde" and out.dropped == 5
  assert out.text() == "abcde\n[... output cut by the sandbox: 5 more bytes were not kept]"
  assert OutputCollector(limit=10).text() == ""


def test_describe_exit_names_the_cause():
  limits = SandboxLimits(cpu_time_s=7)
  assert "CPU time limit of 7 s" in describe_exit(128 + signal.SIGXCPU, limits)
  assert "segmentation fault" in describe_exit(128 + signal.SIGSEGV, limits)
  assert "SIGKILL" in describe_exit(-signal.SIGKILL, limits)
  assert describe_exit(3, limits) == "the process exited with status 3"
  assert describe_exit(None, limits) == "it stopped responding"


def test_limits_reject_nonpositive_values():
  with pytest.raises(ValueError, match="SandboxLimits.memory_mb: expected a positive int, found 0"):
    SandboxLimits(memory_mb=0)


def test_closed_ancestor_finds_the_topmost_directory_others_cannot_enter():
  root = pathlib.Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp itself is open to all
  try:
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "a" / "b", 0o700)
    os.chmod(root / "a" / "b" / "c", 0o700)
    assert closed_ancestor(str(root / "a" / "b" / "c" / "d")) == str(root / "a" / "b")
    os.chmod(root / "a" / "b", 0o755)
    assert closed_ancestor(str(root / "a" / "b" / "c" / "d")) == str(root / "a" / "b" / "c")
    os.chmod(root / "a" / "b" / "c", 0o755)
    assert closed_ancestor(str(root / "a" / "b" / "c" / "d")) is None
  finally:
    shutil.rmtree(root)


# --- sessions ------------------------------------------------------------------------------------


def test_namespace_persists_across_runs_and_is_private_to_its_session(pool):
  with pool.open() as a, pool.open() as b:
    assert a.run("x = 41").error is None
    assert a.run("x += 1\nprint(x)") == ExecResult("42\n", False, None)
    result = b.run("print(x)")
    assert "NameError: name 'x' is not defined" in result.output
    assert result.error == "NameError: name 'x' is not defined"


def test_tools_are_callable_by_bare_name_and_setup_code_runs_first(pool):
  with pool.open(tools=["os.path:join", "json:dumps"], setup_code="base = 'dir'") as s:
    assert s.run("print(join(base, 'f.txt'), dumps({'a': 1}))").output == 'dir/f.txt {"a": 1}\n'


def test_bad_tool_specs_are_rejected_before_any_worker_is_used(pool):
  for bad in ["os.path.join", "os.path:", ":join", "os path:join"]:
    with pytest.raises(ValueError, match="expected tools as 'module:function'"):
      pool.open(tools=[bad])
  with pytest.raises(TypeError, match="found the str"):
    pool.open(tools="os.path:join")


def test_failing_tool_import_or_setup_code_fails_the_open_and_frees_the_slot(pool):
  with pytest.raises(
      SandboxError, match="'no_such_module_xyz:f' could not be imported: ModuleNotFoundError"
  ):
    pool.open(tools=["no_such_module_xyz:f"])
  with pytest.raises(SandboxError, match="ZeroDivisionError"):
    pool.open(setup_code="1 / 0")
  with pool.open() as s:  # the slots came back
    assert s.run("print('ok')").output == "ok\n"


def test_exceptions_give_a_traceback_in_the_output_and_a_one_line_error(pool):
  with pool.open() as s:
    result = s.run("def f():\n    return 1 / 0\nprint('before')\nf()")
    assert result.output.startswith("before\nTraceback (most recent call last):\n")
    assert "return 1 / 0" in result.output  # the user's source line is shown
    assert "worker.py" not in result.output  # the sandbox's own frames are not
    assert result.error == "ZeroDivisionError: division by zero" and not result.timed_out
    syntax = s.run("def (:")
    assert syntax.error.startswith("SyntaxError") and "SyntaxError" in syntax.output


def test_sys_exit_is_an_error_but_the_namespace_survives(pool):
  with pool.open() as s:
    s.run("kept = 'yes'")
    assert s.run("import sys; sys.exit(5)").error == "SystemExit: 5"
    assert s.run("print(kept)").output == "yes\n"


def test_stdout_stderr_and_subprocess_output_arrive_in_order(pool):
  with pool.open() as s:
    code = "import sys, subprocess\nprint('one')\nprint('two', file=sys.stderr)\nsubprocess.run(['echo', 'three'])\nprint('four')"
    assert s.run(code).output == "one\ntwo\nthree\nfour\n"


def test_the_session_user_has_a_name_and_a_writable_home(pool):
  with pool.open() as s:
    result = s.run(
        "import os, pwd, getpass\nprint(pwd.getpwuid(os.getuid()).pw_name, getpass.getuser(), os.path.expanduser('~'))"
    )
    assert result.output == "sandbox sandbox /tmp/work\n"
    assert (
        s.run("#!BASH\nwhoami; touch ~/file && echo home-writable").output
        == "sandbox\nhome-writable\n"
    )


def test_bash_runs_in_the_working_directory_and_reports_its_status(pool):
  with pool.open() as s:
    s.run("open('data.txt', 'w').write('hello from python')")
    result = s.run("#!BASH\ncat data.txt; echo; echo to-stderr >&2; pwd")
    assert result.output == "hello from python\nto-stderr\n/tmp/work\n" and result.error is None
    assert s.run("#!BASH\nexit 3").error == "bash exited with status 3"
    assert s.run("print('python again')").output == "python again\n"


def test_r_runs_when_installed_and_says_so_clearly_when_not(pool):
  with pool.open() as s:
    result = s.run("#!R\ncat(1 + 1)")
    if shutil.which("Rscript") is None:
      assert "R is not available in this sandbox" in result.output
      assert result.error == "R is not installed in this sandbox"
    else:
      assert result.output.strip() == "2" and result.error is None


def test_run_validates_its_arguments_and_refuses_a_closed_session(pool):
  s = pool.open()
  with pytest.raises(TypeError, match="expected code as str, found bytes"):
    s.run(b"print(1)")
  with pytest.raises(ValueError, match="expected timeout_s > 0, found 0"):
    s.run("1", timeout_s=0)
  s.close()
  s.close()  # idempotent
  with pytest.raises(SandboxError, match="the session is closed"):
    s.run("1")


def test_arun_runs_sessions_concurrently(pool):
  async def main():
    sessions = [pool.open(), pool.open()]
    start = time.monotonic()
    results = await asyncio.gather(
        *(s.arun("import time; time.sleep(0.6); print('done')", 5) for s in sessions)
    )
    elapsed = time.monotonic() - start
    for s in sessions:
      s.close()
    return results, elapsed

  results, elapsed = asyncio.run(main())
  assert [r.output for r in results] == ["done\n", "done\n"]
  assert elapsed < 1.1  # two 0.6 s sleeps overlapped


def test_open_waits_for_a_free_worker_then_times_out():
  with SandboxPool(max_workers=1, limits=LIMITS, open_timeout_s=0.5) as small:
    held = small.open()
    start = time.monotonic()
    with pytest.raises(SandboxError, match="all 1 workers stayed busy for 0.5 s"):
      small.open()
    assert 0.4 < time.monotonic() - start < 2.0
    held.close()
    with small.open() as s:
      assert s.run("print(2)").output == "2\n"


def test_concurrent_spawners_never_exceed_max_workers():
  """Sessions opened and closed back to back: the spawn threads refill slots in parallel, but idle +
  owned + starting workers never exceed max_workers and every session gets a fresh process."""
  with SandboxPool(max_workers=2, limits=LIMITS, spawn_threads=2) as small:
    seen = set()
    for _ in range(6):
      with small.open() as a, small.open() as b:
        with small._cond:
          assert len(small._idle) + small._owned + small._spawning <= 2
        seen.update({a._worker.process.pid, b._worker.process.pid})
    assert len(seen) == 12
  with pytest.raises(ValueError, match="spawn_threads"):
    SandboxPool(max_workers=1, spawn_threads=0)


def test_closing_the_pool_kills_its_workers():
  small = SandboxPool(max_workers=2, limits=LIMITS)
  session = small.open()
  pid = int(session.run("import os; print(os.getpid())").output)  # pid inside its namespace
  assert pid == 2 or small.isolation.get("namespaces") is False
  workers = [session._worker.process] + [w.process for w in small._idle]
  small.close()
  assert all(p.poll() is not None for p in workers)
  with pytest.raises(SandboxError, match="closed"):
    small.open()


def test_close_from_another_thread_stops_a_running_execution_promptly(pool):
  session = pool.open()
  results = []
  runner = threading.Thread(
      target=lambda: results.append(session.run("import time; time.sleep(30)", timeout_s=60))
  )
  runner.start()
  time.sleep(0.3)
  start = time.monotonic()
  session.close()
  runner.join(timeout=5)
  assert not runner.is_alive() and time.monotonic() - start < 2.0
  assert "crashed (it was killed by signal SIGKILL)" in results[0].error
  with pytest.raises(SandboxError, match="closed"):
    session.run("1")


def test_project_tools_work_although_the_project_is_hidden(pool):
  project = default_hidden_paths()[0]
  with pool.open(tools=["biomni_jax.env.sandbox.limits:describe_exit"]) as s:
    assert s.run("print(describe_exit(3, None))").output == "the process exited with status 3\n"
    assert s.run(f"import os; os.listdir({project!r})").error.startswith("PermissionError")


def test_preloaded_modules_are_imported_before_sessions_open():
  probe = "import sys; print('xml.dom.minidom' in sys.modules)"
  with SandboxPool(max_workers=1, limits=LIMITS, preload=["xml.dom.minidom"]) as preloading:
    with preloading.open() as s:
      assert s.run(probe).output == "True\n"
  with SandboxPool(max_workers=1, limits=LIMITS) as plain, plain.open() as s:
    assert s.run(probe).output == "False\n"


def test_a_worker_that_cannot_start_is_reported_by_open():
  with SandboxPool(
      max_workers=1, limits=LIMITS, preload=["no_such_module_xyz"], open_timeout_s=1.0
  ) as broken:
    with pytest.raises(
        SandboxError,
        match="no worker became ready within 1 s; last start error: .*ModuleNotFoundError",
    ):
      broken.open()
