"""asyncio face of the engine for the rollout pool: `await engine.generate(session, ids, params)`."""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

from biomni_jax.sampling.engine import Engine, Session
from biomni_jax.sampling.params import Completion, SamplingParams


class AsyncEngine:
  """Wraps an `Engine`; each call awaits the engine thread's Future without blocking the event loop."""

  def __init__(self, engine: Engine):
    self.engine = engine

  def open_session(self) -> Session:
    return self.engine.open_session()

  def close_session(self, session: Session) -> None:
    self.engine.close_session(session)

  async def generate(
      self,
      session: Session,
      new_token_ids: Sequence[int],
      sampling_params: Optional[SamplingParams] = None,
  ) -> Completion:
    return await asyncio.wrap_future(self.engine.submit(session, new_token_ids, sampling_params))

  def update_params(self, params, version: int) -> None:
    self.engine.update_params(params, version)
