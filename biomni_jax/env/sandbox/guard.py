"""The in-interpreter network guard: a Python audit hook that refuses every socket operation that
could reach another endpoint, raised before the syscall runs (so no packet ever leaves).

Audit hooks cannot be removed once added, so sandboxed code cannot switch the guard off from Python.
Code that bypasses the interpreter (ctypes, a bash script) meets the worker's empty network namespace
instead, where the guard is the second wall rather than the only one.
"""

from __future__ import annotations

import sys

BLOCKED_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
REFUSAL = "network access is disabled in this sandbox ({event} to {address!r} refused)"


def _network_guard(event: str, args: tuple) -> None:
  if event in BLOCKED_EVENTS:
    address = args[1] if len(args) > 1 else None
    raise PermissionError(REFUSAL.format(event=event, address=address))


def install_network_guard() -> None:
  """Install the guard in this interpreter, for the rest of its life."""
  sys.addaudithook(_network_guard)
