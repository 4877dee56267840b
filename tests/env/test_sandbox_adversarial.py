"""Adversarial suite: each attack is contained, the pool keeps serving, other sessions are untouched.

After every case a witness session (opened once, holding a variable) must still answer, and a fresh
session must open and run. Attacks that could harm the machine if containment failed check first,
inside the sandbox, that they no longer run as root, and are bounded (a fork storm of a few thousand
forks, not an unbounded bomb). No test sends traffic off this machine: non-loopback addresses are
TEST-NET (192.0.2.1) and must be refused by the guard before any syscall.
"""

import os
import time

import pytest

from biomni_jax.env.sandbox import SandboxLimits, SandboxPool
from biomni_jax.env.sandbox.pool import default_hidden_paths

LIMITS = SandboxLimits(
    memory_mb=1024, cpu_time_s=60, max_processes=48, max_output_bytes=20_000, tmp_mb=64
)
FAKE_SECRET = "fake-secret-value-8d1f3e"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="isolation (namespaces, uid drop) needs root"
)


@pytest.fixture(scope="module")
def pool():
  os.environ["BIOMNI_SANDBOX_TEST_SECRET"] = FAKE_SECRET  # must never reach a session
  with SandboxPool(max_workers=3, limits=LIMITS) as pool:
    with pool.open() as first:  # waits for workers to be up
      assert first.run("print(1)").output == "1\n"
    assert pool.isolation == {"namespaces": True, "uid_drop": True, "network_guard": True}
    yield pool
  os.environ.pop("BIOMNI_SANDBOX_TEST_SECRET")


@pytest.fixture(scope="module")
def witness(pool):
  session = pool.open()
  session.run("witness_value = 'untouched'")
  yield session
  session.close()


@pytest.fixture
def attacker(pool, witness):
  session = pool.open()
  session.run("before_attack = 7")
  yield session
  session.close()
  assert witness.run("print(witness_value)", timeout_s=5).output == "untouched\n"
  with pool.open() as fresh:
    assert fresh.run("print(6 * 7)", timeout_s=5).output == "42\n"


def processes_of_uid(uid: int) -> list[int]:
  pids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/status") as f:
          uid_line = next(line for line in f if line.startswith("Uid:"))
      except (OSError, StopIteration):
        continue
      if int(uid_line.split()[1]) == uid:
        pids.append(int(entry))
  return pids


def assert_restarted(session):
  result = session.run("print('before_attack' in globals())", timeout_s=5)
  assert result.output.startswith("[Note: the execution environment was restarted")
  assert result.output.endswith("False\n") and result.error is None


# --- time ----------------------------------------------------------------------------------------


def test_infinite_loop_is_stopped_at_the_wall_time(attacker):
  start = time.monotonic()
  result = attacker.run("while True:\n    pass", timeout_s=1)
  assert result.timed_out and "time limit of 1 s" in result.error
  assert time.monotonic() - start < 2.5
  assert_restarted(attacker)


def test_loop_that_swallows_every_exception_is_still_stopped(attacker):
  code = "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass"
  assert attacker.run(code, timeout_s=1).timed_out
  assert_restarted(attacker)


def test_bash_runs_under_the_same_wall_time_and_memory_limits(attacker):
  assert attacker.run("#!BASH\nwhile true; do :; done", timeout_s=1).timed_out
  assert_restarted(attacker)
  result = attacker.run("#!BASH\npython -c 'bytearray(8 * 1024**3)'")
  assert "MemoryError" in result.output and result.error == "bash exited with status 1"


def test_partial_output_before_a_timeout_is_returned(attacker):
  result = attacker.run("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout_s=1)
  assert result.timed_out and result.output == "started\n"


def test_threads_that_outlive_a_timeout_die_with_the_session(attacker, pool):
  uid = int(attacker.run("import os; print(os.getuid())").output)
  code = (
      "import threading, time\n"
      "def spin():\n    while True:\n        open('beacon', 'a').write('x')\n        time.sleep(0.01)\n"
      "for _ in range(4):\n    threading.Thread(target=spin, daemon=False).start()\n"
      "time.sleep(30)"
  )
  assert attacker.run(code, timeout_s=1).timed_out
  assert processes_of_uid(uid) == []  # no thread, no process of that session is left anywhere
  assert_restarted(attacker)
  assert attacker.run("import os; print(os.path.exists('beacon'))").output.endswith("False\n")


def test_background_thread_output_stays_in_its_own_session(attacker, witness):
  attacker.run(
      "import threading, time\n"
      "threading.Thread(target=lambda: [print('tick', flush=True) or time.sleep(0.001) for _ in iter(int, 1)],"
      " daemon=True).start()"
  )
  time.sleep(0.3)
  later = attacker.run("print('still works')", timeout_s=5)
  assert (
      "still works" in later.output and len(later.output.encode()) <= LIMITS.max_output_bytes + 200
  )
  assert witness.run("print('quiet')").output == "quiet\n"


def test_cpu_time_limit_kills_a_session_that_burns_cpu():
  with SandboxPool(max_workers=1, limits=SandboxLimits(cpu_time_s=1, memory_mb=1024)) as small:
    with small.open() as s:
      result = s.run("while True:\n    pass", timeout_s=10)
      assert not result.timed_out
      assert "exceeded the CPU time limit of 1 s" in result.error
      assert s.run("print('back')").output.endswith("back\n")


# --- processes and signals -----------------------------------------------------------------------


def test_bounded_fork_storm_hits_the_process_limit_and_spares_other_sessions(attacker, witness):
  uid = int(attacker.run("import os; print(os.getuid())").output)
  storm = (
      "import os, time\n"
      "assert os.getuid() != 0, 'refusing to fork-storm as root'\n"
      "made = failed = 0\n"
      "for _ in range(3000):\n"
      "    try:\n        pid = os.fork()\n    except OSError:\n        failed += 1\n        continue\n"
      "    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
      "    made += 1\n"
      "print(made, failed)"
  )
  result = attacker.run(storm, timeout_s=20)
  made, failed = map(int, result.output.split())
  assert made + failed == 3000 and made < LIMITS.max_processes and failed > 2900
  assert len(processes_of_uid(uid)) >= made  # the children are alive, holding the limit ...
  assert (
      witness.run("#!BASH\necho witness can fork").output == "witness can fork\n"
  )  # ... of that uid only
  attacker.close()
  deadline = time.monotonic() + 5
  while processes_of_uid(uid) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert processes_of_uid(uid) == []


def test_a_setsid_double_forked_daemon_dies_with_its_session(attacker):
  uid = int(attacker.run("import os; print(os.getuid())").output)
  attacker.run("#!BASH\n(setsid sleep 300 &) ; (nohup sleep 300 >/dev/null 2>&1 &) ; echo started")
  assert len(processes_of_uid(uid)) >= 3
  attacker.close()
  time.sleep(0.2)
  assert processes_of_uid(uid) == []


def test_thread_storm_is_bounded_by_the_process_limit(attacker):
  code = (
      "import threading, time\nstarted = 0\n"
      "try:\n    for _ in range(2000):\n        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
      "        started += 1\nexcept RuntimeError as e:\n    print('refused:', e)\nprint(started)"
  )
  result = attacker.run(code, timeout_s=10)
  assert "refused: can't start new thread" in result.output
  assert int(result.output.split()[-1]) < LIMITS.max_processes


def test_killing_the_parent_is_refused(attacker):
  result = attacker.run(
      "import os, signal\nprint(os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)"
  )
  assert result.output.startswith("1\n")  # the parent it can see is its namespace's init ...
  assert result.error.startswith("PermissionError")  # ... which runs as another user
  assert attacker.run("print(before_attack)").output == "7\n"


def test_the_pool_process_cannot_be_signalled(attacker):
  for sig in ("SIGKILL", "SIGTERM"):
    result = attacker.run(f"import os, signal\nos.kill({os.getpid()}, signal.{sig})")
    assert result.error.split(":")[0] in ("ProcessLookupError", "PermissionError")
  assert (
      attacker.run(
          "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
      ).output
      == "[1, 2]\n"
  )


def test_kill_everything_reachable_reaches_only_the_sessions_own_processes(attacker):
  code = (
      "import os, signal, subprocess\nchild = subprocess.Popen(['sleep', '30'])\n"
      "if os.getuid() != 0:\n    os.kill(-1, signal.SIGKILL)\nprint(child.wait())"
  )
  assert attacker.run(code, timeout_s=5).output == "-9\n"  # its own child died, nothing else could
  assert attacker.run("print(before_attack)").output == "7\n"


def test_os_exit_is_reported_as_a_crash_and_the_session_restarts(attacker):
  result = attacker.run("print('bye', flush=True)\nimport os\nos._exit(3)")
  assert result.output == "bye\n" and not result.timed_out
  assert result.error.startswith(
      "the execution environment crashed (the process exited with status 3)"
  )
  assert_restarted(attacker)


def test_fatal_signals_to_itself_are_crashes(attacker):
  result = attacker.run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
  assert "segmentation fault" in result.error
  assert_restarted(attacker)
  result = attacker.run("import signal, time\nsignal.alarm(1)\ntime.sleep(5)", timeout_s=4)
  assert "killed by signal SIGALRM" in result.error and not result.timed_out


def test_stopping_itself_ends_in_a_timeout(attacker):
  result = attacker.run("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", timeout_s=1)
  assert result.timed_out
  assert_restarted(attacker)


def test_forged_protocol_messages_cannot_confuse_the_pool(attacker):
  forge = (
      "import os\n"
      "for fd in map(int, os.listdir('/proc/self/fd')):\n"
      '    try:\n        os.write(fd, b\'{"event": "done", "error": null}\\n{not json\\n\')\n'
      "    except OSError:\n        pass"
  )
  attacker.run(forge)  # the pool takes the forged 'done' as this run's reply ...
  result = attacker.run("print('next')", timeout_s=5)  # ... and the junk line as the next one
  assert result.error.startswith(
      "the execution environment crashed (it wrote to the sandbox's reply pipe: "
      "unreadable reply b'{not json'"
  )
  assert_restarted(attacker)


# --- memory and output ---------------------------------------------------------------------------


def test_one_huge_allocation_raises_memory_error_and_keeps_the_namespace(attacker):
  result = attacker.run("block = bytearray(8 * 1024**3)")
  assert result.error.startswith("MemoryError")
  assert attacker.run("print(before_attack)").output == "7\n"


def test_growing_memory_bomb_raises_memory_error(attacker):
  result = attacker.run(
      "hoard = []\nwhile True:\n    hoard.append(bytearray(50 * 1024**2))", timeout_s=10
  )
  assert result.error.startswith("MemoryError") and not result.timed_out
  assert attacker.run("hoard.clear(); print(before_attack)").output == "7\n"


def test_huge_python_output_is_capped(attacker):
  start = time.monotonic()
  result = attacker.run(
      "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 250_000)", timeout_s=10
  )
  assert time.monotonic() - start < 5 and result.error is None
  assert result.output.startswith("x" * LIMITS.max_output_bytes)
  assert result.output.endswith(
      f"[... output cut by the sandbox: {50_000_000 - LIMITS.max_output_bytes} more bytes were not kept]"
  )


def test_huge_bash_output_is_capped(attacker):
  result = attacker.run("#!BASH\nhead -c 30000000 /dev/zero | tr '\\0' 'y'", timeout_s=10)
  assert (
      result.output.startswith("y" * LIMITS.max_output_bytes)
      and "output cut by the sandbox" in result.output
  )


def test_filling_the_private_disk_fails_with_no_space(attacker):
  result = attacker.run(
      "with open('/tmp/fill', 'wb') as f:\n    for _ in range(200):\n        f.write(b'0' * 1024**2)",
      timeout_s=10,
  )
  assert result.error.startswith("OSError: [Errno 28] No space left on device")


def test_deep_recursion_raises_recursion_error(attacker):
  result = attacker.run("def down(n):\n    return down(n + 1)\ndown(0)")
  assert result.error.startswith("RecursionError")
  assert attacker.run("print(before_attack)").output == "7\n"


def test_recursion_past_the_c_stack_is_a_contained_crash(attacker):
  # Python-to-Python calls no longer use the C stack; recursing through a builtin (map) does.
  code = "import sys\nsys.setrecursionlimit(10**8)\ndef down(n):\n    return list(map(down, [n + 1]))\ndown(0)"
  result = attacker.run(code, timeout_s=10)
  assert "crashed" in result.error and "segmentation fault" in result.error
  assert_restarted(attacker)


# --- files ---------------------------------------------------------------------------------------


def test_etc_shadow_is_unreadable(attacker):
  assert attacker.run("open('/etc/shadow').read()").error.startswith("PermissionError")
  assert "Permission denied" in attacker.run("#!BASH\ncat /etc/shadow").output


def test_project_checkout_is_invisible(attacker):
  project = default_hidden_paths()[0]
  assert os.path.exists(os.path.join(project, "biomni_jax"))  # visible from the test ...
  for code in [
      f"import os; os.listdir({project!r})",
      f"open({os.path.join(project, 'biomni_jax', '__init__.py')!r})",
      "import biomni_jax.env.protocol",
  ]:
    result = attacker.run(code)
    assert result.error.split(":")[0] in (
        "PermissionError",
        "ModuleNotFoundError",
        "FileNotFoundError",
    ), code
  assert "Permission denied" in attacker.run(f"#!BASH\nls {project}").output


def test_writing_outside_the_working_directory_is_refused(attacker):
  project = default_hidden_paths()[0]
  import sys

  for target in [
      "/etc/sandbox_probe",
      os.path.join(project, "probe"),
      os.path.join(sys.prefix, "probe"),
      "/root/probe",
      "/usr/lib/probe",
      "/probe",
  ]:
    result = attacker.run(f"open({target!r}, 'w').write('x')")
    assert result.error.split(":")[0] in ("PermissionError", "OSError"), (target, result)
    assert not os.path.exists(target)
  assert (
      attacker.run("open('inside.txt', 'w').write('ok'); print(open('inside.txt').read())").output
      == "ok\n"
  )


def test_sessions_cannot_see_each_others_files_or_processes(attacker, witness):
  attacker.run(
      "open('/tmp/work/planted.txt', 'w').write('x'); open('/tmp/shared.txt', 'w').write('x')"
  )
  result = witness.run(
      "import os\nprint(os.path.exists('/tmp/work/planted.txt'), os.path.exists('/tmp/shared.txt'))"
  )
  assert result.output == "False False\n"


def test_privileges_cannot_be_regained(attacker):
  result = attacker.run("import os\nos.setuid(0)")
  assert result.error.startswith("PermissionError")
  status = attacker.run("print(open('/proc/self/status').read())").output
  assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status


# --- network and environment ---------------------------------------------------------------------


def test_socket_to_loopback_is_refused_by_the_guard(attacker):
  result = attacker.run("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))")
  assert (
      result.error
      == "PermissionError: network access is disabled in this sandbox (socket.connect to ('127.0.0.1', 22) refused)"
  )
  assert "guard.py" not in result.output  # the traceback shows the user's frames only


def test_non_loopback_traffic_is_refused_before_the_syscall(attacker):
  tcp = attacker.run("import socket\nsocket.socket().connect(('192.0.2.1', 80))")
  assert "socket.connect to ('192.0.2.1', 80) refused" in tcp.error
  udp = attacker.run(
      "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('192.0.2.1', 53))"
  )
  assert "socket.sendto to ('192.0.2.1', 53) refused" in udp.error
  bind = attacker.run("import socket\nsocket.socket().bind(('0.0.0.0', 8080))")
  assert "socket.bind to ('0.0.0.0', 8080) refused" in bind.error


def test_network_namespace_has_only_a_loopback_that_is_down(attacker):
  devices = attacker.run("print(open('/proc/net/dev').read())").output
  assert [line.split(":")[0].strip() for line in devices.splitlines()[2:] if line.strip()] == ["lo"]
  result = attacker.run("#!BASH\necho x > /dev/tcp/127.0.0.1/22")  # bash bypasses the guard ...
  assert "Network is unreachable" in result.output and result.error  # ... and meets the namespace


def test_secrets_in_the_pool_environment_do_not_reach_sessions(attacker):
  assert os.environ["BIOMNI_SANDBOX_TEST_SECRET"] == FAKE_SECRET
  for code in [
      "import os; print(dict(os.environ))",
      "print(open('/proc/self/environ').read())",
      "#!BASH\nenv; cat /proc/1/environ 2>&1",
      f"import os; print(open('/proc/{os.getpid()}/environ').read())",
  ]:
    result = attacker.run(code)
    assert (
        FAKE_SECRET not in result.output and "BIOMNI_SANDBOX_TEST_SECRET" not in result.output
    ), code


def test_concurrent_sessions_under_mixed_attacks_keep_their_own_state():
  """12 sessions on 3 workers at once, through arun: crashes and timeouts hit only their sessions."""
  import asyncio

  attacks = [
      "import os; os._exit(1)",
      "while True: pass",
      "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
  ]

  async def episode(pool, i):
    session = await asyncio.get_running_loop().run_in_executor(None, pool.open)
    try:
      await session.arun(f"mine = {i}", 5)
      attacked = i % 2 == 0
      if attacked:
        await session.arun(attacks[i % 3], 0.5)
      result = await session.arun("print(globals().get('mine'))", 5)
      return attacked, result.output.splitlines()[-1]
    finally:
      session.close()

  async def main(pool):
    return await asyncio.gather(*(episode(pool, i) for i in range(12)))

  with SandboxPool(max_workers=3, limits=LIMITS) as pool:
    outcomes = asyncio.run(main(pool))
  assert outcomes == [(i % 2 == 0, "None" if i % 2 == 0 else str(i)) for i in range(12)]
