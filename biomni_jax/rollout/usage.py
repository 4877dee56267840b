"""How busy the engine is, seen from the rollout pool: requests in flight over wall time.

busy_fraction = (time with >= 1 generate request in flight) / wall time
mean_requests_in_flight = integral of the in-flight count over time / wall time
slot_utilization = mean_requests_in_flight / num_slots (when the engine's slot count is known)
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional


class EngineUsage:

  def __init__(self, num_slots: Optional[int] = None):
    self.num_slots = num_slots
    self._lock = threading.Lock()
    self._start = self._last = time.monotonic()
    self._in_flight = 0
    self._busy = 0.0
    self._area = 0.0
    self.requests = 0

  def _advance(self) -> None:
    now = time.monotonic()
    dt = now - self._last
    self._area += self._in_flight * dt
    if self._in_flight:
      self._busy += dt
    self._last = now

  def begin(self) -> None:
    with self._lock:
      self._advance()
      self._in_flight += 1
      self.requests += 1

  def end(self) -> None:
    with self._lock:
      self._advance()
      self._in_flight -= 1

  def reset(self) -> None:
    with self._lock:
      self._start = self._last = time.monotonic()
      self._busy = self._area = 0.0
      self.requests = 0

  def summary(self) -> dict:
    with self._lock:
      self._advance()
      wall = max(self._last - self._start, 1e-9)
      out = {
          "engine_busy_fraction": self._busy / wall,
          "engine_mean_requests_in_flight": self._area / wall,
          "engine_requests": self.requests,
      }
      if self.num_slots:
        out["engine_slot_utilization"] = self._area / wall / self.num_slots
      return out

  def wrap(self, engine: Any) -> "_CountingEngine":
    return _CountingEngine(engine, self)


class _CountingEngine:
  """The engine's async face with every generate call counted."""

  def __init__(self, engine: Any, usage: EngineUsage):
    self._engine, self._usage = engine, usage

  def open_session(self):
    return self._engine.open_session()

  def close_session(self, session) -> None:
    self._engine.close_session(session)

  async def generate(self, session, new_token_ids, sampling_params=None):
    self._usage.begin()
    try:
      return await self._engine.generate(session, new_token_ids, sampling_params)
    finally:
      self._usage.end()
