"""The pool's side of the pipes to one worker: JSON-line requests and replies, and the output stream.

Three pipes per worker: requests (pool -> worker), replies (worker -> pool) and output (the worker's
fd 1 and fd 2, shared by everything the session starts). Replies are parsed as JSON, never unpickled:
the worker runs untrusted code and must not be able to run code in the pool. Every wait has a
deadline, and output is drained while waiting so a chatty session can never block on a full pipe.
"""

from __future__ import annotations

import json
import os
import select
import time

MAX_REPLY_BYTES = 1 << 20
_READ_CHUNK = 1 << 20


class ChannelClosed(Exception):
  """The worker is gone (its reply pipe closed) or broke the protocol."""


class ProtocolViolation(ChannelClosed):
  """The worker wrote something that is not a reply (session code can reach the reply pipe)."""


class ChannelTimeout(Exception):
  """The deadline passed before the worker answered."""


class OutputCollector:
  """Keeps the first `limit` bytes of a stream and counts the rest."""

  def __init__(self, limit: int):
    self.limit = limit
    self.kept = bytearray()
    self.dropped = 0

  def add(self, data: bytes) -> None:
    room = self.limit - len(self.kept)
    if room > 0:
      self.kept += data[:room]
    self.dropped += max(0, len(data) - max(room, 0))

  def text(self) -> str:
    text = self.kept.decode("utf-8", errors="replace")
    if self.dropped:
      text += f"\n[... output cut by the sandbox: {self.dropped} more bytes were not kept]"
    return text


class WorkerChannel:

  def __init__(self, request_fd: int, reply_fd: int, output_fd: int):
    self.request_fd, self.reply_fd, self.output_fd = request_fd, reply_fd, output_fd
    for fd in (request_fd, reply_fd, output_fd):
      os.set_blocking(fd, False)
    self._reply_buffer = bytearray()
    self._output_open = True
    self.closed = False

  def _read_output(self, output: OutputCollector) -> None:
    try:
      data = os.read(self.output_fd, _READ_CHUNK)
    except BlockingIOError:
      return
    if data:
      output.add(data)
    else:
      self._output_open = False

  def _wait(
      self, readers: list[int], writers: list[int], deadline: float
  ) -> tuple[list[int], list[int]]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise ChannelTimeout()
    ready_r, ready_w, _ = select.select(readers, writers, [], remaining)
    return ready_r, ready_w

  def send(self, message: dict, deadline: float, output: OutputCollector) -> None:
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
      readers = [self.output_fd] if self._output_open else []
      ready_r, ready_w = self._wait(readers, [self.request_fd], deadline)
      if self.output_fd in ready_r:
        self._read_output(output)
      if self.request_fd in ready_w:
        try:
          data = data[os.write(self.request_fd, data) :]
        except BlockingIOError:
          continue
        except (BrokenPipeError, OSError) as e:
          raise ChannelClosed(f"the worker closed its request pipe ({e})") from e

  def receive(self, deadline: float, output: OutputCollector) -> dict:
    """Wait for the next reply line; output arriving meanwhile goes to `output`."""
    while b"\n" not in self._reply_buffer:
      if len(self._reply_buffer) > MAX_REPLY_BYTES:
        raise ProtocolViolation(f"reply longer than {MAX_REPLY_BYTES} bytes")
      readers = [self.reply_fd] + ([self.output_fd] if self._output_open else [])
      ready_r, _ = self._wait(readers, [], deadline)
      if self.output_fd in ready_r:
        self._read_output(output)
      if self.reply_fd in ready_r:
        try:
          data = os.read(self.reply_fd, _READ_CHUNK)
        except BlockingIOError:
          continue
        if not data:
          raise ChannelClosed("the worker closed its reply pipe")
        self._reply_buffer += data
    line, _, rest = bytes(self._reply_buffer).partition(b"\n")
    self._reply_buffer = bytearray(rest)
    try:
      reply = json.loads(line)
    except ValueError as e:
      raise ProtocolViolation(f"unreadable reply {line[:200]!r}: {e}") from e
    if not isinstance(reply, dict):
      raise ProtocolViolation(f"expected a JSON object as reply, found {line[:200]!r}")
    return reply

  def drain_output(self, output: OutputCollector, budget_s: float = 0.05) -> None:
    """Read what is already in the output pipe (bounded: a background writer may never stop)."""
    deadline = time.monotonic() + budget_s
    while self._output_open and time.monotonic() < deadline:
      ready_r, _, _ = select.select([self.output_fd], [], [], 0)
      if not ready_r:
        return
      self._read_output(output)

  def close(self) -> None:
    """Close the pipes once (closing a number twice could close someone else's reused fd)."""
    if self.closed:
      return
    self.closed = True
    for fd in (self.request_fd, self.reply_fd, self.output_fd):
      try:
        os.close(fd)
      except OSError:
        pass
