"""Linux isolation primitives for sandbox workers: namespaces, mounts, privilege drop.

Python 3.11 has no os.unshare/os.mount, so the few syscalls needed are reached through libc with
ctypes. Every function raises OSError naming the syscall and its arguments when the kernel refuses.

What a worker does with them (see worker.py):
  outer process (root)   unshare(NEWNS | NEWNET | NEWPID); make every mount private; fork ->
  init, pid 1 of the ns  mount a fresh /proc and private tmpfs over world-writable dirs; fork ->
  worker, pid 2          at session open: hide the project's files, set rlimits, no_new_privs,
                         drop to a throw-away uid/gid, then run user code.
Killing pid 1 of a pid namespace makes the kernel kill every process in it, so a session can never
leave a process behind (not by setsid, not by double fork).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# Directories any user may write to on a stock Linux; each worker gets its own empty tmpfs there.
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
  if result != 0:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what} failed: {os.strerror(errno)}")


def _b(value: str | None) -> bytes | None:
  return None if value is None else value.encode()


def unshare(flags: int) -> None:
  """unshare(2): move this process into new namespaces (CLONE_NEWPID applies to its children)."""
  _check(_libc.unshare(ctypes.c_int(flags)), f"unshare(flags={flags:#x})")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
  """mount(2), with string arguments."""
  _check(
      _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
      f"mount(source={source!r}, target={target!r}, fstype={fstype!r}, flags={flags:#x}, data={data!r})",
  )


def make_mounts_private() -> None:
  """Stop mounts made in this mount namespace from propagating back to the host."""
  mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_proc() -> None:
  """A /proc that shows only this pid namespace (other sessions and the pool become invisible)."""
  mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_private_tmp(path: str, size_mb: int, keep: tuple[str, ...] = ()) -> None:
  """An empty, size-capped tmpfs (sticky, world-writable like /tmp) over `path`.

  Directories of `keep` that lie under `path` (a Python runtime or the project checked out under /tmp,
  as on CI) stay visible, read-only, at their own place: they are bind-mounted back from the covered
  host directory, reached through a descriptor opened before the cover.
  """
  prefix = path.rstrip(os.sep) + os.sep
  inner = sorted(p for p in keep if p.startswith(prefix) and os.path.isdir(p))
  host = os.open(path, os.O_PATH | os.O_DIRECTORY) if inner else None
  try:
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(size_mb)}m,mode=1777")
    for inner_path in inner:
      os.makedirs(inner_path, mode=0o755, exist_ok=True)
      mount(
          f"/proc/self/fd/{host}/{os.path.relpath(inner_path, path)}",
          inner_path,
          None,
          MS_BIND | MS_REC,
      )
      mount(None, inner_path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
  finally:
    if host is not None:
      os.close(host)


def hide_path(path: str) -> None:
  """Cover `path` with an empty read-only tmpfs of mode 000: no listing, no reading, no writing."""
  mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=000")


def closed_ancestor(path: str) -> str | None:
  """The topmost ancestor of `path` that other users cannot enter (no o+x), or None."""
  parts = os.path.abspath(path).split(os.sep)[1:-1]
  for depth in range(1, len(parts) + 1):
    ancestor = os.sep + os.path.join(*parts[:depth])
    if not os.stat(ancestor).st_mode & 0o001:
      return ancestor
  return None


def expose_through_closed_ancestors(paths: list[str], staging_dir: str) -> list[str]:
  """Make each path reachable by unprivileged users although an ancestor is closed to them.

  Typical case: a pyenv Python under /root (mode 700). The closed ancestor is covered with a
  read-only tmpfs that holds nothing but the needed paths, bind-mounted back at their own place,
  so everything else under it (root's home, caches, keys) becomes invisible. Returns the covered
  ancestors. staging_dir: a private writable directory used while mounts are moved.
  """
  by_ancestor: dict[str, list[str]] = {}
  for path in paths:
    ancestor = closed_ancestor(path)
    if ancestor is not None:
      by_ancestor.setdefault(ancestor, []).append(path)
  for ancestor, inner_paths in by_ancestor.items():
    staged = []
    for i, path in enumerate(inner_paths):
      stage = os.path.join(staging_dir, f".expose-{len(staged)}-{i}")
      os.makedirs(stage)
      mount(path, stage, None, MS_BIND | MS_REC)
      staged.append((stage, path))
    mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
    for stage, path in staged:
      os.makedirs(path, mode=0o755, exist_ok=True)
      mount(stage, path, None, MS_MOVE)
      os.rmdir(stage)
    mount(
        "tmpfs",
        ancestor,
        "tmpfs",
        MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
        "size=64k,mode=755",
    )
  return list(by_ancestor)


def set_parent_death_signal(signum: int) -> None:
  """Ask the kernel to send `signum` when the parent thread exits (cleared by a uid change)."""
  _check(
      _libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0),
      f"prctl(PR_SET_PDEATHSIG, {signum})",
  )


def set_no_new_privs() -> None:
  """After this, exec never grants privileges (setuid binaries like su or mount lose their bit)."""
  _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS, 1)")


def drop_privileges(uid: int, gid: int) -> None:
  """Irreversibly become uid/gid with no supplementary groups (real, effective and saved ids)."""
  os.setgroups([])
  os.setresgid(gid, gid, gid)
  os.setresuid(uid, uid, uid)
  if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
    raise OSError(
        f"drop_privileges: expected uid/gid {uid}/{gid}, found {os.getuid()}/{os.getgid()}"
    )
