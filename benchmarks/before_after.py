"""One benchmark, two versions of the code, one interleaved run: is the change slower?

    python benchmarks/before_after.py --before=REV [--after=.] [--repetitions 5] \
        -- benchmarks/rollout.py --batches 8

Unpacks `--before` (a git revision) with `git archive` into a temporary directory (and `--after`
too, unless it is "." = this working tree), then runs the benchmark script of each tree on that
tree's code (PYTHONPATH = the tree) as subprocess peers through `harness.run_interleaved`: before,
after, before, after, ... after one untimed round. Each run's figures are parsed from its output:

  rollout.py   "<peer> : X trajectories/min (W s, process CPU C s)" for every peer line; the
               sample of this harness is the `--peer` line (default "async"): wall W, CPU C,
               units = X * W / 60 trajectories.

The load is recorded around every subprocess (its whole tree counts as ours), and a loaded run is
NOT A RESULT, as for every benchmark here. Ratio = after / before of median throughput.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PEER_LINE = re.compile(
    r"^(?P<peer>\w+)\s*:\s*(?P<rate>[\d.]+) trajectories/min \((?P<wall>[\d.]+) s, process CPU "
    r"(?P<cpu>[\d.]+) s"
)


def unpack(rev: str, into: str) -> str:
  """The tree of `rev` in `into` (or this working tree for ".")."""
  if rev == ".":
    return REPO
  archive = subprocess.run(["git", "-C", REPO, "archive", rev], capture_output=True, check=True)
  subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
  return into


def parse_rollout(text: str, peer: str) -> harness.Sample:
  """The `peer` line of rollout.py's output as a Sample (wall, CPU, trajectories)."""
  for line in text.splitlines():
    m = _PEER_LINE.match(line.strip())
    if m and m["peer"] == peer:
      wall, cpu, rate = float(m["wall"]), float(m["cpu"]), float(m["rate"])
      return harness.Sample(wall, cpu, units=rate * wall / 60.0, info={"line": line.strip()})
  raise ValueError(f"before_after: no '{peer} : ... trajectories/min' line in the output:\n{text}")


def tree_peer(tree: str, script_args: list[str], peer: str):
  def run() -> harness.Sample:
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run(
        [sys.executable, *script_args], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
      raise RuntimeError(
          f"before_after: {script_args} in {tree} exited {out.returncode}:\n{out.stderr[-3000:]}"
      )
    return parse_rollout(out.stdout, peer)

  return run


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--before", required=True, help="git revision of the 'before' code")
  ap.add_argument("--after", default=".", help="git revision of the 'after' code ('.' = this tree)")
  ap.add_argument("--peer", default="async", help="which line of rollout.py's output is timed")
  harness.add_arguments(ap)
  ap.add_argument("script", nargs=argparse.REMAINDER, help="-- benchmark script and its flags")
  args = ap.parse_args(argv)
  script = [a for a in args.script if a != "--"]
  if not script or os.path.basename(script[0]) != "rollout.py":
    ap.error("expected `-- benchmarks/rollout.py [flags]` (the output format this parses)")
  with tempfile.TemporaryDirectory() as before_dir, tempfile.TemporaryDirectory() as after_dir:
    trees = {"before": unpack(args.before, before_dir), "after": unpack(args.after, after_dir)}
    run = harness.run_interleaved(
        f"{' '.join(script)}: {args.peer} peer, before={args.before} after={args.after}",
        [(name, tree_peer(tree, script, args.peer)) for name, tree in trees.items()],
        args.repetitions,
    )
  print(harness.format_run(run, unit="trajectory", ours="after"))
  return harness.finish("before_after", [run], args, {"before": args.before, "after": args.after})


if __name__ == "__main__":
  sys.exit(main())
