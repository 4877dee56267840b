"""Data-parallel sampling on one host: several engine replicas behind the `Engine` interface.

A sampler mesh `data x tensor` runs `data` independent engines (each with its own thread, KV cache and
tensor-parallel mesh; see layout.py). A session belongs to the replica that opened it, chosen as the one
with the fewest open sessions, and every turn of the session runs there, so its KV cache is reused.
Weight updates go to every replica under the same version.

    engines = make_engine(config, layout, params, num_slots=64, max_len=65_536, ...)   # Engine or group
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from typing import Any, Optional, Sequence

from biomni_jax.sampling.engine import Engine, Session
from biomni_jax.sampling.params import SamplingParams


@dataclasses.dataclass(eq=False)
class ReplicaSession:
  """A session of one replica (`replica` indexes `EngineGroup.engines`)."""

  replica: int
  inner: Session

  @property
  def id(self) -> int:
    return self.inner.id

  @property
  def history(self) -> list:
    """Every token id fed or sampled so far (read-only; see engine.Session)."""
    return self.inner.history


class EngineGroup:
  """`Engine`'s public interface over several engines; num_slots is per replica."""

  def __init__(self, engines: Sequence[Engine]):
    if not engines:
      raise ValueError("EngineGroup needs at least one engine")
    self.engines = list(engines)
    self._open = [0] * len(self.engines)
    self._lock = threading.Lock()

  @property
  def config(self):
    return self.engines[0].config

  @property
  def max_len(self) -> int:
    return self.engines[0].max_len

  @property
  def num_slots(self) -> int:
    """Slots in all replicas together (what may decode at once)."""
    return sum(e.num_slots for e in self.engines)

  @property
  def version(self) -> int:
    return min(e.version for e in self.engines)

  @property
  def compilations(self) -> list:
    return self.engines[0].compilations

  @property
  def stats(self) -> dict:
    """Every numeric counter summed over the replicas."""
    total: dict[str, Any] = {}
    for e in self.engines:
      for k, v in e.stats.items():
        total[k] = total.get(k, 0) + v
    return total

  def precompile(self) -> None:
    for e in self.engines:
      e.precompile()

  def is_alive(self) -> bool:
    return all(e.is_alive() for e in self.engines)

  def open_session(self) -> ReplicaSession:
    with self._lock:
      replica = min(range(len(self.engines)), key=lambda r: self._open[r])
      self._open[replica] += 1
    return ReplicaSession(replica, self.engines[replica].open_session())

  def submit(
      self,
      session: ReplicaSession,
      new_token_ids: Sequence[int],
      sampling_params: Optional[SamplingParams] = None,
  ) -> Future:
    if not isinstance(session, ReplicaSession):
      future: Future = Future()
      future.set_exception(
          ValueError(
              f"EngineGroup.submit expects a session from its open_session(), found "
              f"{type(session).__name__}"
          )
      )
      return future
    return self.engines[session.replica].submit(session.inner, new_token_ids, sampling_params)

  generate = Engine.generate  # a one-turn session: open, submit, close when done

  def close_session(self, session: ReplicaSession) -> None:
    with self._lock:
      self._open[session.replica] -= 1
    self.engines[session.replica].close_session(session.inner)

  def update_params(self, params, version: int) -> None:
    """`params`: one tree for all replicas, or a list with one tree per replica (SamplerLayout.publish)."""
    trees = params if isinstance(params, list) else [params] * len(self.engines)
    if len(trees) != len(self.engines):
      raise ValueError(
          f"EngineGroup.update_params: {len(trees)} trees for {len(self.engines)} replicas"
      )
    for engine, tree in zip(self.engines, trees):
      engine.update_params(tree, version)

  def release_memory(self) -> Future:
    """Every replica's `release_memory`; resolves when all have freed theirs."""
    futures = [e.release_memory() for e in self.engines]
    done: Future = Future()

    def check(_):
      if all(f.done() for f in futures) and not done.done():
        done.set_result(None)

    for f in futures:
      f.add_done_callback(check)
    return done

  def shutdown(self, wait: bool = True) -> None:
    for e in self.engines:
      e.shutdown(wait=wait)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.shutdown()


def make_engine(config, layout, params, **engine_kwargs):
  """An Engine on the layout's one replica, or an EngineGroup of one Engine per replica.

  `params`: one tree (placed onto each replica) or a list with one tree per replica."""
  trees = params if isinstance(params, list) else [params] * layout.num_replicas
  engines = [
      Engine(config, tree, rules, **engine_kwargs) for tree, rules in zip(trees, layout.replicas)
  ]
  return engines[0] if len(engines) == 1 else EngineGroup(engines)


def publish_to(engine, layout, params, version: int) -> None:
  """Reshards the trainer's `params` into the engine's layout (a collective, see layout.py) and swaps
  them in under `version`."""
  trees = layout.publish(params)
  if isinstance(engine, EngineGroup):
    engine.update_params(trees, version)
  else:
    engine.update_params(trees[0], version)
