"""Peer benchmarks that load cannot fake: interleaved repetitions, medians, CPU time, a load flag.

Every benchmark in this directory measures its peers through `run_interleaved`:

- Peers run interleaved, A B C A B C ..., never AAA BBB CCC, so a neighbour that starts or stops
  mid-run touches every peer alike instead of one.
- Each peer runs `repetitions` times (after `warmup` untimed calls); a peer's figure is the median
  of its repetitions, printed with the min-max range.
- Each repetition records wall seconds and the CPU seconds of the process that did the work
  (`time.process_time` in this process, or as reported by a peer's own subprocess). Under load a
  peer whose threads spin burns CPU without progress; CPU seconds per unit of work show it.
- Around each timed call the harness reads /proc: load average and runnable tasks (/proc/loadavg),
  all CPUs' busy time (/proc/stat: user + nice + system + irq + softirq + steal) and the CPU time of
  this process and every descendant (utime + stime + cutime + cstime from /proc/<pid>/stat). Busy
  time not ours is what other processes used:

      other_cores = (busy_ticks_delta - own_ticks_delta) / CLK_TCK / wall_seconds

  A run is LOADED when, over the timed calls of any one peer, other processes used more than
  `load_threshold` cores on average (default 0.10, a tenth of one core). A LOADED run's ratios are
  printed under a "NOT A RESULT: machine under load" line and the benchmark exits non-zero unless
  --allow-load.

Ratios are ours / peer of median throughput (units of work per second), for wall time and for CPU
time: above 1 ours is faster (wall) or does the work in less CPU (cpu).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
DEFAULT_LOAD_THRESHOLD = 0.10  # cores used by other processes, averaged over a peer's timed calls
NOT_A_RESULT = "NOT A RESULT: machine under load"
_TINY = 1e-9  # seconds: the floor under a sample's time when dividing by it


@dataclasses.dataclass
class Sample:
  """One timed repetition of one peer.

  wall, cpu: seconds (cpu = CPU time of the process that did the work, all its threads).
  units: work done (e.g. tokens decoded); throughput = units / wall.
  info: JSON-able extras written to the results file.
  output: what the peer produced (e.g. token ids), for correctness checks; never written.
  """

  wall: float
  cpu: float
  units: float = 1.0
  info: dict = dataclasses.field(default_factory=dict)
  output: Any = None

  def minus(self, other: "Sample", units: float) -> "Sample":
    """self - other in wall and cpu (e.g. a long run minus a short one, to drop a fixed prefix
    such as prefill); keeps self's output."""
    return Sample(self.wall - other.wall, self.cpu - other.cpu, units, dict(self.info), self.output)


def measure(fn: Callable[[], Any], units: float = 1.0) -> Sample:
  """Runs fn() in this process: wall (perf_counter) and this process's CPU (process_time)."""
  cpu0, wall0 = time.process_time(), time.perf_counter()
  out = fn()
  return Sample(time.perf_counter() - wall0, time.process_time() - cpu0, units, output=out)


# ------------------------------------------------------------------------------------ machine state


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The machine at one instant. busy_ticks: every CPU's busy time; own_ticks: this process tree's
  CPU time, both in CLOCK_TICKS per second (None where /proc cannot be read)."""

  time: float
  busy_ticks: Optional[int]
  own_ticks: Optional[int]
  loadavg: tuple[float, float, float]
  runnable: int


def _stat_fields(pid: str) -> Optional[list[str]]:
  """Fields of /proc/<pid>/stat after the command name (field 3 = state is index 0)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      text = f.read()
  except OSError:  # the process exited while we read /proc
    return None
  return text[text.rindex(")") + 2 :].split()


def own_tree_ticks(root: int) -> int:
  """CPU ticks of `root` and all its live descendants, including their reaped children (cutime,
  cstime), so a subprocess that ran and exited still counts as ours."""
  parents, times = {}, {}
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    fields = _stat_fields(pid)
    if fields is None:
      continue
    parents[int(pid)] = int(fields[1])
    times[int(pid)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
  children: dict[int, list[int]] = {}
  for pid, ppid in parents.items():
    children.setdefault(ppid, []).append(pid)
  total, stack = 0, [root]
  while stack:
    pid = stack.pop()
    total += times.get(pid, 0)
    stack.extend(children.get(pid, ()))
  return total


def busy_ticks() -> int:
  """All CPUs' busy ticks from /proc/stat: user nice system irq softirq steal (guest time is
  already in user; iowait and idle are not busy)."""
  with open("/proc/stat") as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
  return user + nice + system + irq + softirq + steal


class ProcProbe:
  """Reads the machine's state from /proc; our process tree is os.getpid() and its descendants."""

  def __init__(self, root: Optional[int] = None):
    self.root = os.getpid() if root is None else root

  def snapshot(self) -> Snapshot:
    try:
      busy = busy_ticks()
      own = own_tree_ticks(self.root)
    except OSError:
      busy = own = None
    try:
      with open("/proc/loadavg") as f:
        parts = f.read().split()
      loadavg = (float(parts[0]), float(parts[1]), float(parts[2]))
      runnable = int(parts[3].split("/")[0])
    except OSError:
      loadavg, runnable = os.getloadavg(), -1
    return Snapshot(time.perf_counter(), busy, own, loadavg, runnable)


@dataclasses.dataclass
class Window:
  """The machine during one timed call: other processes' CPU in cores (None = unknown)."""

  peer: str
  repetition: int
  wall: float
  own_cpu: Optional[float]
  other_cores: Optional[float]
  loadavg_before: tuple
  loadavg_after: tuple
  runnable_before: int
  runnable_after: int

  @classmethod
  def between(cls, peer: str, repetition: int, a: Snapshot, b: Snapshot) -> "Window":
    wall = max(b.time - a.time, 1e-9)
    if None in (a.busy_ticks, b.busy_ticks, a.own_ticks, b.own_ticks):
      own = other = None
    else:
      own = (b.own_ticks - a.own_ticks) / CLOCK_TICKS
      # /proc/stat and per-process times are sampled in whole ticks, so a short window can come
      # out a tick or two off: clamp to [0, the machine's cores].
      other = max(0.0, (b.busy_ticks - a.busy_ticks) / CLOCK_TICKS - own) / wall
      other = min(other, float(os.cpu_count() or 1))
    return cls(peer, repetition, wall, own, other, a.loadavg, b.loadavg, a.runnable, b.runnable)


# -------------------------------------------------------------------------------------------- a run


def _spread(values: Sequence[float]) -> dict:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclasses.dataclass
class Run:
  """Samples and load windows of one interleaved run; `order` lists the peers as they ran."""

  title: str
  peers: list[str]
  samples: dict[str, list[Sample]]
  windows: list[Window]
  order: list[str]
  load_threshold: float = DEFAULT_LOAD_THRESHOLD

  def wall(self, peer: str) -> dict:
    return _spread([s.wall for s in self.samples[peer]])

  def cpu(self, peer: str) -> dict:
    return _spread([s.cpu for s in self.samples[peer]])

  def throughput(self, peer: str) -> dict:
    """units per wall second."""
    return _spread([s.units / max(s.wall, _TINY) for s in self.samples[peer]])

  def cpu_throughput(self, peer: str) -> dict:
    """units per CPU second."""
    return _spread([s.units / max(s.cpu, _TINY) for s in self.samples[peer]])

  def other_cores(self, peer: Optional[str] = None) -> Optional[float]:
    """Other processes' CPU in cores, averaged over the timed calls (of `peer`, or of all); None if
    unknown."""
    windows = [w for w in self.windows if peer is None or w.peer == peer]
    if not windows or any(w.other_cores is None for w in windows):
      return None
    return sum(w.other_cores * w.wall for w in windows) / sum(w.wall for w in windows)

  def load_reason(self) -> Optional[str]:
    """Why this run is LOADED, or None if it was quiet."""
    for peer in self.peers:
      other = self.other_cores(peer)
      if other is None:
        return "the CPU used by other processes could not be read from /proc"
      if other > self.load_threshold:
        return (
            f"other processes used {other:.2f} cores on average during {peer}'s timed calls "
            f"(threshold {self.load_threshold:.2f})"
        )
    return None

  @property
  def loaded(self) -> bool:
    return self.load_reason() is not None

  def ratio(self, ours: str, peer: str) -> dict:
    """ours / peer of median throughput, per wall second and per CPU second (> 1: ours better)."""
    return {
        "wall": self.throughput(ours)["median"] / self.throughput(peer)["median"],
        "cpu": self.cpu_throughput(ours)["median"] / self.cpu_throughput(peer)["median"],
    }

  def to_json(self) -> dict:
    return {
        "title": self.title,
        "order": self.order,
        "load_threshold": self.load_threshold,
        "loaded": self.loaded,
        "load_reason": self.load_reason(),
        "other_cores": self.other_cores(),
        "peers": {
            p: {
                "wall": self.wall(p),
                "cpu": self.cpu(p),
                "throughput": self.throughput(p),
                "cpu_throughput": self.cpu_throughput(p),
                "other_cores": self.other_cores(p),
                "samples": [
                    {"wall": s.wall, "cpu": s.cpu, "units": s.units, "info": s.info}
                    for s in self.samples[p]
                ],
            }
            for p in self.peers
        },
        "windows": [dataclasses.asdict(w) for w in self.windows],
    }


def run_interleaved(
    title: str,
    peers: Sequence[tuple[str, Callable[[], Sample]]],
    repetitions: int = 3,
    *,
    warmup: int = 1,
    load_threshold: float = DEFAULT_LOAD_THRESHOLD,
    probe: Any = None,
) -> Run:
  """Runs `warmup` untimed rounds, then `repetitions` timed rounds of every peer in the given order
  (A B C A B C ...). A peer is a callable returning its `Sample` (see `measure`)."""
  names = [name for name, _ in peers]
  if len(set(names)) != len(names) or not names:
    raise ValueError(
        f"run_interleaved({title!r}): peer names must be unique and non-empty: {names}"
    )
  if repetitions < 1:
    raise ValueError(f"run_interleaved({title!r}): repetitions must be >= 1, found {repetitions}")
  probe = probe or ProcProbe()
  for _ in range(warmup):
    for _, fn in peers:
      fn()
  samples: dict[str, list[Sample]] = {name: [] for name in names}
  windows, order = [], []
  for rep in range(repetitions):
    for name, fn in peers:
      before = probe.snapshot()
      sample = fn()
      after = probe.snapshot()
      if not isinstance(sample, Sample):
        raise TypeError(f"peer {name!r} returned {type(sample).__name__}, expected a Sample")
      samples[name].append(sample)
      windows.append(Window.between(name, rep, before, after))
      order.append(name)
  return Run(title, names, samples, windows, order, load_threshold)


# ---------------------------------------------------------------------------------------- reporting


def _fmt(spread: dict, scale: float = 1.0, digits: int = 3) -> str:
  m, lo, hi = (spread[k] * scale for k in ("median", "min", "max"))
  return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def format_run(run: Run, unit: str = "unit", ours: Optional[str] = None) -> str:
  """A table of the peers (median [min-max]), the load, and ours / peer ratios."""
  lines = [f"{run.title}  ({len(run.samples[run.peers[0]])} interleaved repetitions, medians)"]
  width = max(len(p) for p in run.peers)
  for p in run.peers:
    units = statistics.median(s.units for s in run.samples[p])
    cpu_per_unit = statistics.median(s.cpu / s.units for s in run.samples[p])
    other = run.other_cores(p)
    lines.append(
        f"  {p:>{width}}: {_fmt(run.throughput(p), digits=1)} {unit}/s   "
        f"wall {_fmt(run.wall(p))} s   cpu {_fmt(run.cpu(p))} s   "
        f"cpu/{unit} {cpu_per_unit * 1e3:.2f} ms ({units:g} {unit})   "
        f"other procs {'?' if other is None else f'{other:.2f}'} cores"
    )
  for p in run.peers:
    bad = sum(s.wall <= 0 or s.cpu <= 0 for s in run.samples[p])
    if bad:  # a difference of two timings (e.g. N tokens minus 1) smaller than their noise
      lines.append(
          f"  warning: {p}: {bad} sample(s) with wall or CPU <= 0; the measured work is too short "
          "for the timer's noise (give it more work)"
      )
  loads = [w.loadavg_before[0] for w in run.windows] + [w.loadavg_after[0] for w in run.windows]
  runnable = [w.runnable_before for w in run.windows] + [w.runnable_after for w in run.windows]
  other = run.other_cores()
  lines.append(
      f"  load: other processes {'?' if other is None else f'{other:.2f}'} cores on average; "
      f"loadavg(1 min) {min(loads):.2f}-{max(loads):.2f}; runnable tasks {min(runnable)}-"
      f"{max(runnable)}"
  )
  if ours is not None:
    reason = run.load_reason()
    if reason:
      lines.append(f"  {NOT_A_RESULT} ({reason}); ratios below are not results:")
    for p in run.peers:
      if p == ours:
        continue
      r = run.ratio(ours, p)
      lines.append(
          f"  {ours} / {p}: throughput {r['wall']:.2f}x (wall), {r['cpu']:.2f}x (CPU)   "
          f"[> 1: {ours} faster / cheaper]"
      )
  return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--repetitions", type=int, default=3, help="timed rounds of every peer")
  parser.add_argument(
      "--allow-load",
      action="store_true",
      help="exit 0 even when the run was LOADED (its figures are still marked NOT A RESULT)",
  )
  parser.add_argument(
      "--load-threshold",
      type=float,
      default=DEFAULT_LOAD_THRESHOLD,
      help="cores of other processes' CPU above which a run is LOADED",
  )
  parser.add_argument(
      "--results", default="", help="append a JSON record of the run (one line) to this file"
  )


def _git(*args: str) -> str:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    return subprocess.run(
        ["git", "-C", root, *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def record(benchmark: str, runs: Sequence[Run], extra: Optional[dict] = None) -> dict:
  """A JSON-able record: command line, commit (and changed files), date, machine, runs."""
  return {
      "benchmark": benchmark,
      "argv": [sys.executable] + sys.argv,
      "git_commit": _git("rev-parse", "HEAD"),
      "git_changed_files": _git(
          "status", "--porcelain", "--", "biomni_jax", "benchmarks"
      ).splitlines(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "host": platform.node()},
      "loaded": any(r.loaded for r in runs),
      "runs": [r.to_json() for r in runs],
      **(extra or {}),
  }


def finish(
    benchmark: str, runs: Sequence[Run], args: argparse.Namespace, extra: Optional[dict] = None
) -> int:
  """Prints the verdict over all runs, appends the record to --results, returns the exit code: 1 if
  any run was LOADED (0 with --allow-load), else 0."""
  rec = record(benchmark, runs, extra)
  if args.results:
    with open(args.results, "a") as f:
      f.write(json.dumps(rec) + "\n")
    print(f"record appended to {args.results}")
  loaded = [r for r in runs if r.loaded]
  if not loaded:
    print("load: quiet (every run below the threshold): these figures are results")
    return 0
  bar = "!" * 100
  print(bar)
  for r in loaded:
    print(f"{NOT_A_RESULT}: {r.title}: {r.load_reason()}")
  print(bar)
  return 0 if args.allow_load else 1
