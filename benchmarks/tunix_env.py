"""Tunix's virtual environment (built on demand, outside the project's install) and its worker.

google-tunix 0.1.7 caps transformers at 5.12.1 (through safetensors < 0.8) and runs on jax 0.10.2,
so it cannot share the project's environment. `ensure_venv` builds one under
~/.cache/biomni_jax/tunix-venv (or $BIOMNI_TUNIX_VENV) with the pins below, once; a marker file
holding the pins says it is complete. `TunixWorker` runs benchmarks/tunix_peer.py in it and turns
its replies into harness samples. Anything that fails raises `TunixUnavailable` with the reason, so
a benchmark can print "Tunix: unavailable (<reason>)" and go on without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from benchmarks.harness import Sample

PINS = (
    "google-tunix==0.1.7",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "transformers==5.12.1",
    "safetensors==0.7.0",
)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tunix_peer.py")
_MARKER = "biomni_tunix_pins.txt"


class TunixUnavailable(RuntimeError):
  """Tunix cannot be a peer here; the message says why."""


def venv_dir() -> str:
  return os.environ.get("BIOMNI_TUNIX_VENV") or os.path.expanduser("~/.cache/biomni_jax/tunix-venv")


def _tail(path: str, lines: int = 8) -> str:
  try:
    with open(path, errors="replace") as f:
      return " | ".join(l.strip() for l in f.read().splitlines()[-lines:] if l.strip())
  except OSError:
    return ""


def ensure_venv(path: Optional[str] = None, build: bool = True) -> str:
  """The Tunix venv's python, building the venv first if it is missing or was built with other pins
  (pip from the package registry; several minutes the first time)."""
  path = path or venv_dir()
  python = os.path.join(path, "bin", "python")
  marker = os.path.join(path, _MARKER)
  wanted = "\n".join(PINS)
  if os.path.exists(marker) and open(marker).read() == wanted and os.path.exists(python):
    return python
  if not build:
    raise TunixUnavailable(f"no Tunix venv at {path} (building it was not allowed)")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  log = path + ".build.log"
  print(f"Tunix: building its venv at {path} ({' '.join(PINS)}); log {log}", flush=True)
  with open(log, "w") as out:
    steps = (
        [sys.executable, "-m", "venv", "--clear", path],
        [python, "-m", "pip", "install", "--disable-pip-version-check", *PINS],
    )
    for cmd in steps:
      try:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
      except (OSError, subprocess.TimeoutExpired) as exc:
        raise TunixUnavailable(f"building the venv failed: {' '.join(cmd[:4])}: {exc}") from exc
      if done.returncode:
        raise TunixUnavailable(
            f"building the venv failed: {' '.join(cmd[:4])} exited {done.returncode}: {_tail(log)}"
        )
  with open(marker, "w") as f:
    f.write(wanted)
  return python


class TunixWorker:
  """benchmarks/tunix_peer.py in the Tunix venv (its CPU time is reported by the worker itself)."""

  def __init__(self, python: str):
    self.stderr = tempfile.NamedTemporaryFile(
        "w+", prefix="tunix-peer-", suffix=".log", delete=False
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH="")
    self.proc = subprocess.Popen(
        [python, WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=self.stderr,
        text=True,
        env=env,
    )
    self.versions: dict = {}

  def _call(self, msg: dict) -> dict:
    try:
      self.proc.stdin.write(json.dumps(msg) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except OSError as exc:
      raise TunixUnavailable(f"worker pipe failed: {exc}; {_tail(self.stderr.name)}") from exc
    if not line:
      raise TunixUnavailable(
          f"worker exited ({self.proc.poll()}): {_tail(self.stderr.name)} (log {self.stderr.name})"
      )
    reply = json.loads(line)
    if not reply.get("ok"):
      raise TunixUnavailable(reply.get("error", "worker failed without a message"))
    return reply

  def setup(self, checkpoint: str, prompts: Sequence[Sequence[int]], new_tokens: int) -> None:
    """Loads the checkpoint, builds the sampler for these prompts, compiles (untimed)."""
    reply = self._call(
        {
            "cmd": "setup",
            "checkpoint": checkpoint,
            "prompts": [list(map(int, p)) for p in prompts],
            "new_tokens": int(new_tokens),
        }
    )
    self.versions = reply.get("versions", {})

  def decode_sample(self, units: float) -> Sample:
    """time(prompt + N new tokens) - time(prompt + 1), wall and the worker's CPU; output: N ids."""
    reply = self._call({"cmd": "run"})
    long, short = reply["long"], reply["short"]
    return Sample(
        long["wall"] - short["wall"], long["cpu"] - short["cpu"], units, output=reply["ids"]
    )

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.stdin.close()
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.stderr.close()
    os.unlink(self.stderr.name)
