"""Limits and failures end requests cleanly; the engine thread keeps serving."""

import asyncio
import time

import pytest

from biomni_jax.sampling import AsyncEngine, SamplingParams
from tests.sampling import conftest
from tests.sampling.conftest import random_ids

TIMEOUT = 120
GREEDY = SamplingParams(temperature=0, max_new_tokens=4)


def _still_serves(engine):
  assert engine.is_alive()
  c = engine.generate(random_ids(8, seed=99), GREEDY).result(TIMEOUT)
  assert len(c.token_ids) == 4


def test_prompt_longer_than_max_len_finishes_with_length(engine):
  c = engine.generate(random_ids(300, seed=40), GREEDY).result(TIMEOUT)
  assert (c.finish_reason, c.stop_reason, c.token_ids) == ("length", "max_len", ())
  _still_serves(engine)


def test_session_reaching_max_len_finishes_with_length(engine):
  session = engine.open_session()
  c = engine.submit(
      session, random_ids(240, seed=41), SamplingParams(temperature=0, max_new_tokens=100)
  ).result(TIMEOUT)
  assert (c.finish_reason, c.stop_reason, len(c.token_ids)) == ("length", "max_len", 16)
  again = engine.submit(session, [1, 2], GREEDY).result(TIMEOUT)
  assert (again.finish_reason, again.token_ids) == ("length", ())
  engine.close_session(session)
  _still_serves(engine)


def test_bad_requests_fail_their_future_only(engine):
  with pytest.raises(ValueError, match="token ids must be in"):
    engine.generate([1, 2, 10_000], GREEDY).result(TIMEOUT)
  with pytest.raises(ValueError, match="empty"):
    engine.generate([], GREEDY).result(TIMEOUT)
  session = engine.open_session()
  slow = engine.submit(session, [1, 2, 3], SamplingParams(temperature=0, max_new_tokens=50))
  with pytest.raises(ValueError, match="in flight"):
    engine.submit(session, [4], GREEDY).result(TIMEOUT)
  assert len(slow.result(TIMEOUT).token_ids) == 50
  engine.close_session(session)
  with pytest.raises(ValueError, match="closed"):
    engine.submit(session, [4], GREEDY).result(TIMEOUT)
  with pytest.raises(ValueError, match="stop"):
    SamplingParams(stop=("",))
  _still_serves(engine)


def test_exception_in_a_callback_fails_only_that_request(engine):
  prompt = random_ids(11, seed=42)
  free = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=8)).result(TIMEOUT)
  conftest.POISON.add(free.token_ids[3])
  try:
    others = [
        engine.generate(
            random_ids(6, seed=43 + i), SamplingParams(temperature=0, max_new_tokens=20)
        )
        for i in range(4)
    ]
    doomed = engine.generate(
        prompt, SamplingParams(temperature=0, max_new_tokens=8, stop=("never",))
    )
    with pytest.raises(RuntimeError, match="detokenize refused"):
      doomed.result(TIMEOUT)
    assert [len(f.result(TIMEOUT).token_ids) for f in others] == [20] * 4
  finally:
    conftest.POISON.clear()
  _still_serves(engine)


def test_failing_device_step_fails_its_requests_and_the_engine_recovers(engine, monkeypatch):
  real_decode = engine._steps.decode
  calls = {"n": 0}

  def flaky_decode(*args):
    calls["n"] += 1
    if calls["n"] == 3:
      raise RuntimeError("injected device failure")
    return real_decode(*args)

  monkeypatch.setattr(engine._steps, "decode", flaky_decode)
  victim = engine.generate(random_ids(8, seed=44), SamplingParams(temperature=0, max_new_tokens=10))
  with pytest.raises(RuntimeError, match="injected device failure"):
    victim.result(TIMEOUT)
  assert engine.stats["step_failures"] >= 1
  _still_serves(engine)


def test_asyncio_wrapper_runs_concurrent_turns(engine):
  aengine = AsyncEngine(engine)

  async def episode(seed):
    session = aengine.open_session()
    first = await aengine.generate(session, random_ids(8, seed=seed), GREEDY)
    second = await aengine.generate(session, [5, 6], GREEDY)
    aengine.close_session(session)
    return first.token_ids + second.token_ids

  async def main():
    return await asyncio.gather(*(episode(s) for s in (70, 71, 72)))

  results = asyncio.run(main())
  assert [len(r) for r in results] == [8, 8, 8]
  sync = engine.generate(random_ids(8, seed=71), GREEDY).result(TIMEOUT)
  assert results[1][:4] == sync.token_ids


def test_a_cancelled_request_stops_decoding_and_its_turn_is_undone(engine):
  session = engine.open_session()
  prompt = random_ids(8, seed=45)
  running = engine.submit(session, prompt, SamplingParams(temperature=0, max_new_tokens=200))
  deadline = time.monotonic() + TIMEOUT
  while len(session.history) < len(prompt) + 3 and time.monotonic() < deadline:
    time.sleep(0.01)  # decoding has begun
  assert running.cancel()
  while session.busy and time.monotonic() < deadline:
    time.sleep(0.01)
  # Retired at its next token; the whole turn (its prompt too) is undone, as for a failed request.
  assert not session.busy and session.history == []
  greedy = SamplingParams(temperature=0, max_new_tokens=4)
  again = engine.submit(session, prompt, greedy).result(TIMEOUT)
  assert len(again.token_ids) == 4
  engine.close_session(session)
