"""benchmarks/harness.py: interleaving, medians, CPU time, the load flag (real /proc, scripted)."""

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import harness


class ScriptedProbe:
  """Snapshots whose busy and own ticks advance by scripted amounts over each timed call of 1 s."""

  def __init__(self, deltas):
    self.deltas = list(deltas)  # (busy_ticks, own_ticks) per timed call, in order
    self.calls = 0
    self.t = self.busy = self.own = 0

  def snapshot(self):
    if self.calls % 2:  # the "after" snapshot of a call
      busy, own = self.deltas[self.calls // 2]
      self.t, self.busy, self.own = self.t + 1.0, self.busy + busy, self.own + own
    self.calls += 1
    return harness.Snapshot(self.t, self.busy, self.own, (0.5, 0.4, 0.3), 2)


def scripted_peer(name, walls, calls, cpu_scale=0.5, units=10.0):
  it = iter(walls)

  def run():
    calls.append(name)
    wall = next(it)
    return harness.Sample(wall=wall, cpu=wall * cpu_scale, units=units)

  return name, run


def spin_cpu(seconds):
  end = time.process_time() + seconds
  while time.process_time() < end:
    pass


def test_interleaved_order_medians_and_ratios():
  calls = []
  tick = harness.CLOCK_TICKS
  quiet = [(tick, tick)] * 6  # all busy time is ours
  run = harness.run_interleaved(
      "scripted",
      [
          scripted_peer("a", [9.0, 3.0, 1.0, 2.0], calls, cpu_scale=0.5),  # first value: warmup
          scripted_peer("b", [9.0, 4.0, 8.0, 6.0], calls, cpu_scale=2.0),
      ],
      repetitions=3,
      probe=ScriptedProbe(quiet),
  )
  assert calls == ["a", "b"] + ["a", "b"] * 3
  assert run.order == ["a", "b"] * 3
  assert run.wall("a") == {"median": 2.0, "min": 1.0, "max": 3.0}
  assert run.wall("b") == {"median": 6.0, "min": 4.0, "max": 8.0}
  assert run.cpu("b") == {"median": 12.0, "min": 8.0, "max": 16.0}
  assert run.throughput("a")["median"] == pytest.approx(10.0 / 2.0)
  # a: 5 units/s and 10 units per CPU second; b: 10/6 units/s and 10/12 per CPU second.
  assert run.ratio("a", "b") == pytest.approx({"wall": 3.0, "cpu": 12.0})
  assert not run.loaded and run.other_cores() == pytest.approx(0.0)
  text = harness.format_run(run, unit="tok", ours="a")
  assert "a / b: throughput 3.00x (wall), 12.00x (CPU)" in text
  assert harness.NOT_A_RESULT not in text


def test_non_positive_difference_is_flagged_not_divided_by():
  calls = []
  name, fn = scripted_peer("a", [1.0, 0.5, 2.0, 0.0], calls, cpu_scale=1.0)
  tick = harness.CLOCK_TICKS
  run = harness.run_interleaved("diff", [(name, fn)], 3, probe=ScriptedProbe([(tick, tick)] * 3))
  assert run.throughput("a")["median"] == pytest.approx(20.0)  # of 10 / 0.5, 10 / 2, 10 / ~0
  assert "a: 1 sample(s) with wall or CPU <= 0" in harness.format_run(run)


def test_load_flag_from_other_processes_ticks():
  tick = harness.CLOCK_TICKS
  own = tick  # our process tree used one core-second per 1 s call

  def run_with(other_fraction_per_call):
    calls = []
    deltas = [(own + round(f * tick), own) for f in other_fraction_per_call]
    return harness.run_interleaved(
        "scripted",
        [scripted_peer("a", [1.0] * 3, calls), scripted_peer("b", [1.0] * 3, calls)],
        repetitions=2,
        warmup=1,
        probe=ScriptedProbe(deltas),
    )

  quiet = run_with([0.05, 0.05, 0.0, 0.1])
  assert not quiet.loaded
  assert quiet.other_cores("a") == pytest.approx(0.025)
  assert quiet.other_cores() == pytest.approx(0.05)
  # Load only during b's calls (order a b a b): 0.4 cores on b's average flags the run.
  loaded = run_with([0.0, 0.4, 0.0, 0.4])
  assert loaded.loaded
  assert loaded.other_cores("a") == 0.0 and loaded.other_cores("b") == pytest.approx(0.4)
  assert "b's timed calls" in loaded.load_reason()
  assert harness.NOT_A_RESULT in harness.format_run(loaded, ours="a")


def test_measure_spin_and_sleep_in_process():
  calls = []

  def spin():
    calls.append("spin")
    return harness.measure(lambda: spin_cpu(0.15), units=3)

  def sleep():
    calls.append("sleep")
    return harness.measure(lambda: time.sleep(0.15), units=3)

  run = harness.run_interleaved("real", [("spin", spin), ("sleep", sleep)], repetitions=3)
  assert calls == ["spin", "sleep"] * 4
  assert 0.15 <= run.cpu("spin")["min"] and run.cpu("spin")["max"] < 0.2
  assert run.wall("spin")["min"] >= 0.15
  assert 0.15 <= run.wall("sleep")["min"] and run.wall("sleep")["median"] < 0.5
  assert run.cpu("sleep")["max"] < 0.03
  assert run.ratio("spin", "sleep")["cpu"] < 0.2  # spinning costs CPU that sleeping does not
  for w in run.windows:  # what our own process burns is never "other processes"
    assert w.own_cpu is not None and w.other_cores is not None
  spins = [w.own_cpu for w in run.windows if w.peer == "spin"]
  assert min(spins) >= 0.13


def test_child_process_cpu_counts_as_ours():
  """A subprocess's CPU (a peer in its own venv) is our tree's, not another process's."""

  def child():
    code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    return harness.measure(lambda: subprocess.run([sys.executable, "-c", code], check=True))

  run = harness.run_interleaved("child", [("child", child)], repetitions=1, warmup=0)
  (window,) = run.windows
  assert window.own_cpu >= 0.28  # the reaped child's utime + stime, via our cutime/cstime


def start_neighbour(seconds):
  """A spinning process that is not our descendant (double fork): it belongs to someone else."""
  code = (
      "import os, sys, time\n"
      "pid = os.fork()\n"
      "if pid:\n"
      "  print(pid, flush=True); os._exit(0)\n"
      "null = os.open(os.devnull, os.O_RDWR)\n"
      "for fd in (0, 1, 2):\n"
      "  os.dup2(null, fd)  # let the caller's pipes close now\n"
      "os.setsid(); end = time.time() + float(sys.argv[1])\n"
      "while time.time() < end: pass\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", code, str(seconds)], capture_output=True, text=True, check=True
  )
  return int(out.stdout.strip())


def test_busy_neighbour_makes_the_run_loaded(tmp_path, capsys):
  neighbour = start_neighbour(20)
  try:
    time.sleep(0.2)
    run = harness.run_interleaved(
        "neighbour",
        [("sleep", lambda: harness.measure(lambda: time.sleep(0.3)))],
        repetitions=3,
        warmup=0,
    )
  finally:
    os.kill(neighbour, 9)
  assert run.loaded
  assert run.other_cores() > 0.3  # a spinning neighbour holds most of a core while we sleep
  assert all(w.own_cpu < 0.1 for w in run.windows)  # and is not counted as ours
  args = argparse.Namespace(results=str(tmp_path / "r.jsonl"), allow_load=False)
  assert harness.finish("test", [run], args) == 1
  assert harness.NOT_A_RESULT in capsys.readouterr().out
  args.allow_load = True
  assert harness.finish("test", [run], args) == 0
  records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
  assert len(records) == 2 and records[0]["loaded"] is True
  peer = records[0]["runs"][0]["peers"]["sleep"]
  assert len(peer["samples"]) == 3 and peer["other_cores"] > 0.3
  assert records[0]["runs"][0]["windows"][0]["loadavg_before"]


def test_before_after_reads_the_timed_peer_line_of_rollout_output():
  from benchmarks import before_after

  out = (
      "note: 2 programs compiled\n"
      "sync  :   1182.3 trajectories/min (3.25 s, process CPU 1.16 s)\n"
      "async :   2059.5 trajectories/min (1.86 s, process CPU 1.75 s), S=1, restarts 8\n"
  )
  s = before_after.parse_rollout(out, "async")
  assert (s.wall, s.cpu) == (1.86, 1.75) and abs(s.units - 2059.5 * 1.86 / 60) < 1e-9
  assert before_after.parse_rollout(out, "sync").wall == 3.25
  with pytest.raises(ValueError, match="no 'bound : ... trajectories/min' line"):
    before_after.parse_rollout(out, "bound")
