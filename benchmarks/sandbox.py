"""Sandbox speed: session open latency and executions per second, against a plain in-process exec.

    python benchmarks/sandbox.py [--opens 40] [--runs 500]

Open latency is measured with a pre-started worker ready (the pool's steady state); the open/close
cycle rate includes killing the worker and the spawner starting its replacement. The peer for
executions is `exec` of the same snippet in this process with stdout captured (no isolation at all),
so the ratio is the price of isolation per execution.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

from biomni_jax.env.sandbox import SandboxLimits, SandboxPool

SNIPPETS = {"assign": "x = x + 1", "print": "print(x)"}


def percentile(values: list[float], q: float) -> float:
  ordered = sorted(values)
  return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait_for_idle(pool: SandboxPool, timeout_s: float = 30.0) -> None:
  deadline = time.monotonic() + timeout_s
  while pool.idle_workers == 0:
    if time.monotonic() > deadline:
      raise RuntimeError("no idle sandbox worker within 30 s")
    time.sleep(0.002)


def in_process_rate(code: str, runs: int) -> float:
  namespace = {"x": 0}
  start = time.perf_counter()
  for _ in range(runs):
    with contextlib.redirect_stdout(io.StringIO()):
      exec(compile(code, "<peer>", "exec"), namespace)
  return runs / (time.perf_counter() - start)


def open_latencies(pool: SandboxPool, n: int, tools: list[str] = ()) -> list[float]:
  latencies = []
  for _ in range(n):
    wait_for_idle(pool)
    t0 = time.perf_counter()
    session = pool.open(tools=tools)
    latencies.append(time.perf_counter() - t0)
    session.close()
  return latencies


def describe(latencies: list[float]) -> str:
  return f"p50 {1e3 * statistics.median(latencies):.1f} ms, p95 {1e3 * percentile(latencies, 0.95):.1f} ms"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--opens", type=int, default=40)
  parser.add_argument("--runs", type=int, default=500)
  parser.add_argument("--workers", type=int, default=2)
  args = parser.parse_args()

  start = time.perf_counter()
  with SandboxPool(max_workers=args.workers, limits=SandboxLimits()) as pool:
    wait_for_idle(pool)
    startup_ms = 1e3 * (time.perf_counter() - start)
    print(f"pool start to first ready worker: {startup_ms:.0f} ms; isolation {pool.isolation}")

    latencies = open_latencies(pool, args.opens)
    print(f"session open latency (ready worker, no tools), n={args.opens}: {describe(latencies)}")

    t0 = time.perf_counter()
    for _ in range(args.opens // 2):
      with pool.open() as session:
        session.run("pass", timeout_s=30)
    cycle = (time.perf_counter() - t0) / (args.opens // 2)
    print(
        f"open + run + close cycle, back to back (includes respawning): {1e3 * cycle:.1f} ms "
        f"({1 / cycle:.1f} sessions/s)"
    )

    with pool.open() as session:
      session.run("x = 0")
      for name, code in SNIPPETS.items():
        t0 = time.perf_counter()
        for _ in range(args.runs):
          result = session.run(code, timeout_s=30)
          assert result.error is None, result
        rate = args.runs / (time.perf_counter() - t0)
        peer = in_process_rate(code, args.runs)
        print(
            f"executions/s, snippet {name!r} ({code!r}): sandbox {rate:,.0f}/s vs in-process exec "
            f"{peer:,.0f}/s -> sandbox/peer = {rate / peer:.3f} "
            f"({1e6 / rate:.0f} us vs {1e6 / peer:.1f} us each)"
        )

  tools = project_tools()
  if tools:
    modules = sorted({t.split(":")[0] for t in tools})
    n = max(3, args.opens // 8)
    for preload in ((), modules):
      with SandboxPool(max_workers=args.workers, preload=preload) as pool:
        wait_for_idle(pool)
        print(
            f"session open latency with all {len(tools)} project tools, preload={bool(preload)}, n={n}: "
            f"{describe(open_latencies(pool, n, tools))}"
        )


def project_tools() -> list[str]:
  try:
    from biomni_jax.env.tools import registry
  except ImportError:
    return []
  return registry.import_strings(registry.tool_specs())


if __name__ == "__main__":
  main()
