"""Fixtures for the rollout pool: embedded tokenizer, a toy task family, scripted engine and sandbox fakes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.tokenizer import default_corpus, load_tokenizer, train_embedded_tokenizer
from biomni_jax.env.environment import FamilyEnvironment
from biomni_jax.env.episode import result as exec_result
from biomni_jax.env.sandbox import SandboxError
from biomni_jax.env.tasks import TaskFamily, TaskInstance
from biomni_jax.sampling import Completion

TOY = "toy_echo"
SHORT_SYSTEM = "You are a test agent. Think, then execute code or give the solution."


class EchoFamily(TaskFamily):
  """Answer: the instance's number; grade: exact string match."""

  name = TOY

  def make_instance(self, split, index):
    return TaskInstance(TOY, f"{TOY}/{split}/{index}", f"Say {index}.", str(index), split)

  def grade(self, prediction, answer):
    return float(str(prediction).strip() == answer)


def toy_env() -> FamilyEnvironment:
  return FamilyEnvironment(EchoFamily(), (), SHORT_SYSTEM)


def toy_tasks(n: int, start: int = 0):
  family = EchoFamily()
  return iter([family.instance("train", i) for i in range(start, start + n)])


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  out = tmp_path_factory.mktemp("rollout_tokenizer")
  train_embedded_tokenizer(default_corpus(), vocab_size=1024, out_dir=out)
  return load_tokenizer(out)


@pytest.fixture(scope="session")
def renderer(tokenizer):
  return ChatRenderer(tokenizer)


class ScriptedEngine:
  """A fake async engine: turn k of every session returns the encoded text replies(k, prompt_text).

  Log-probs are -(i + 1) / 100 for the i-th token of a turn (recognisable in tests); each token is
  tagged with the version current when it is "sampled" (`update_params` changes it, thread-safe).
  delay_s: simulated generation time per turn. fail(turn, session_text) -> True raises in generate.
  sampled_eos: the reply ends with a sampled <|im_end|>.
  """

  def __init__(self, renderer, replies, delay_s=0.0, fail=None, sampled_eos=False, version=0):
    self.renderer, self.replies, self.delay_s, self.fail = renderer, replies, delay_s, fail
    self.sampled_eos = sampled_eos
    self.version = version
    self._lock = threading.Lock()
    self._sessions = {}
    self.submitted = []  # (session id, new ids) per call
    self.closed = set()
    self._next = 0

  def open_session(self):
    with self._lock:
      self._next += 1
      self._sessions[self._next] = []
      return self._next

  def close_session(self, session):
    with self._lock:
      self.closed.add(session)

  def update_params(self, params, version):
    with self._lock:
      self.version = version

  async def generate(self, session, new_token_ids, params=None):
    history = self._sessions[session]
    history.extend(int(t) for t in new_token_ids)
    self.submitted.append((session, [int(t) for t in new_token_ids]))
    turn = sum(1 for s, _ in self.submitted if s == session)
    text = self.renderer.tokenizer.decode(history)
    if self.fail is not None and self.fail(turn, text):
      raise RuntimeError(f"scripted engine failure at turn {turn}")
    ids = self.renderer.encode(self.replies(turn, text))
    if self.sampled_eos:
      ids.append(self.renderer.im_end)
    if self.delay_s:
      await asyncio.sleep(self.delay_s / 2)
    first_version = self.version
    if self.delay_s:
      await asyncio.sleep(self.delay_s / 2)
    versions = [first_version] * (len(ids) // 2) + [self.version] * (len(ids) - len(ids) // 2)
    history.extend(ids)
    logprobs = [-(i + 1) / 100 for i in range(len(ids))]
    return Completion(
        tuple(ids), tuple(logprobs), "stop", min(versions), tuple(versions), "stop_string"
    )


class FakeSession:
  """Code 'sleep X' sleeps X s; 'crash' raises SandboxError; 'hang' never answers; else echoes the code."""

  def __init__(self, log):
    self.log = log
    self.closed = False

  async def arun(self, code, timeout_s):
    self.log.append(code)
    if code.startswith("sleep"):
      await asyncio.sleep(float(code.split()[1]))
      return exec_result(f"slept {code.split()[1]}")
    if code == "crash":
      raise SandboxError("worker died")
    if code == "hang":
      await asyncio.sleep(3600)
    return exec_result(f"ran: {code}")

  def close(self):
    self.closed = True


class FakeSandbox:

  def __init__(self):
    self.log, self.sessions = [], []

  def open(self, tools=()):
    session = FakeSession(self.log)
    self.sessions.append(session)
    return session


def scripted(*texts):
  """replies(turn, text) cycling through `texts` by turn number (1-based)."""
  return lambda turn, _text: texts[(turn - 1) % len(texts)]


def answer_from_prompt(turn, text, code="print(1)", turns=2):
  """`turns - 1` execute replies, then the instance's number (read from 'Say N.') as the solution."""
  if turn < turns:
    return f"<think>step {turn}</think><execute>{code}</execute>"
  number = text.rsplit("Say ", 1)[1].split(".", 1)[0]
  return f"<think>done</think><solution>{number}</solution>"
