"""The agent protocol as one state machine, and its text-level driver: one agent, one task, one executor.

The rules (ProtocolMachine), per turn (one assistant reply):
  - an answer block ends the episode (termination "solution");
  - an execute block runs in the executor and its output comes back as a user
    `<observation>...</observation>` message;
  - a parse error gets the protocol's repair message as a user message; the second parse error of
    the episode ends it ("parse_errors").
Running out of turns ends it ("max_turns"): the last allowed reply's code is not run, since no
reply would read its output. Drivers end an episode for reasons only they see: a conversation grown
past a cap before the next reply ("context_limit": characters here, tokens in the token driver), an
engine failure ("error", token driver).

Two drivers apply the machine: `run_episode` here (scripted experts, text-level teachers,
evaluation of text agents; synchronous) and rollout.episode.run_token_episode (the RL rollout pool
and model evaluation: token ids through the inference engine, asynchronous).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from biomni_jax.env import protocol

Message = dict[str, str]
Termination = Literal["solution", "max_turns", "parse_errors", "context_limit", "error"]

MAX_PARSE_ERRORS = 2


class ExecResultLike(Protocol):
  output: str
  timed_out: bool
  error: str | None


class Executor(Protocol):
  """The sandbox session's interface (biomni_jax.env.sandbox)."""

  def run(self, code: str, timeout_s: float) -> ExecResultLike:
    ...


Agent = Callable[[list[Message]], str]


@dataclasses.dataclass
class Episode:
  """A finished episode.

  messages: the whole conversation, starting with the system message (if any) and the task prompt.
  solution: the content of the answer block that ended the episode, or None.
  turns: number of assistant replies.
  termination: why it ended: "solution", "max_turns", "parse_errors" or "context_limit" (the token
    driver also ends on "error").
  """

  messages: list[Message]
  solution: str | None
  turns: int
  termination: Termination
  parse_errors: int = 0

  @property
  def assistant_messages(self) -> list[str]:
    return [m["content"] for m in self.messages if m["role"] == "assistant"]

  def format_reward(self, cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG) -> float:
    return protocol.format_reward(self.assistant_messages, cfg)


def observation_text(result: ExecResultLike, timeout_s: float) -> str:
  """Raw observation text for one execution: its output, plus a line on a timeout or an error."""
  parts = [result.output or ""]
  if result.timed_out:
    parts.append(f"[Execution stopped: it exceeded the time limit of {timeout_s:g} s.]")
  if result.error:
    parts.append(f"[Error: {result.error}]")
  text = "\n".join(p for p in parts if p)
  return text if text else "[The code ran and printed nothing.]"


@dataclasses.dataclass(frozen=True)
class Step:
  """What follows a reply: run `code` (its `ProtocolMachine.observation` is the next user message),
  or send `user` (a repair message), or neither (the episode ended). At most one is set."""

  code: str | None = None
  user: str | None = None


class ProtocolMachine:
  """The protocol's state over one episode: parse -> repair | execute -> observe | finish.

  A driver asks for replies while `awaiting_reply`, passes each to `on_reply` and does what the
  returned Step says; `stop(termination)` ends the episode for a reason the driver sees.
  turns: replies so far; parse_errors: malformed replies so far; solution: the answer that ended
  the episode (or None); termination: None while it runs.
  """

  def __init__(
      self,
      cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
      max_turns: int = 64,
      timeout_s: float = 600.0,
  ):
    if max_turns < 1:
      raise ValueError(f"ProtocolMachine: expected max_turns >= 1, found {max_turns}")
    self.cfg, self.max_turns, self.timeout_s = cfg, max_turns, timeout_s
    self.turns = 0
    self.parse_errors = 0
    self.solution: str | None = None
    self.termination: Termination | None = None

  @property
  def awaiting_reply(self) -> bool:
    return self.termination is None

  def on_reply(self, reply: str) -> Step:
    """Parse one reply and advance: finish, ask for a repair, or ask for its code to be run."""
    if self.termination is not None:
      raise RuntimeError(f"ProtocolMachine: a reply after the episode ended ({self.termination})")
    self.turns += 1
    parsed = protocol.parse_reply(reply, self.cfg)
    if parsed.kind == "solution":
      self.solution, self.termination = parsed.solution, "solution"
      return Step()
    last_turn = self.turns >= self.max_turns
    if parsed.kind == "error":
      self.parse_errors += 1
      if self.parse_errors >= MAX_PARSE_ERRORS:
        self.termination = "parse_errors"
      elif last_turn:
        self.termination = "max_turns"
      return Step(user=parsed.repair)
    if last_turn:  # no reply would read the output: the code is not run
      self.termination = "max_turns"
      return Step()
    return Step(code=parsed.code)

  def observation(self, result: ExecResultLike) -> str:
    """The user message reporting an execution's result (cut to the protocol's length)."""
    return protocol.format_observation(observation_text(result, self.timeout_s), self.cfg)

  def stop(self, termination: Termination) -> None:
    """End the episode before the next reply (context cap, engine error)."""
    self.termination = termination

  def episode(self, messages: list[Message]) -> Episode:
    return Episode(messages, self.solution, self.turns, self.termination, self.parse_errors)


def run_episode(
    agent: Agent,
    instance_prompt: str,
    executor: Executor,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
    max_turns: int = 64,
    system: str | None = None,
    timeout_s: float = 600.0,
    max_context_chars: int | None = None,
) -> Episode:
  """Run one episode to its end (see the module docstring for the rules).

  agent: messages (list of {"role", "content"}) -> one assistant reply; it receives a copy.
  executor: object with .run(code, timeout_s) -> result with .output, .timed_out, .error.
  system: the system prompt, put first when given (see protocol.system_prompt).
  timeout_s: wall-time limit handed to every execution.
  max_context_chars: end the episode before a reply once the messages hold more characters.
  """
  if max_turns < 1:
    raise ValueError(f"run_episode: expected max_turns >= 1, found {max_turns}")
  machine = ProtocolMachine(cfg, max_turns, timeout_s)
  messages: list[Message] = []
  if system is not None:
    messages.append({"role": "system", "content": system})
  messages.append({"role": "user", "content": instance_prompt})
  while machine.awaiting_reply:
    if (
        max_context_chars is not None
        and sum(len(m["content"]) for m in messages) > max_context_chars
    ):
      machine.stop("context_limit")
      break
    reply = agent([dict(m) for m in messages])
    if not isinstance(reply, str):
      raise TypeError(
          f"run_episode: the agent must return str, returned {type(reply).__name__} at turn "
          f"{machine.turns + 1}"
      )
    messages.append({"role": "assistant", "content": reply})
    step = machine.on_reply(reply)
    if step.code is not None:
      messages.append(
          {"role": "user", "content": machine.observation(executor.run(step.code, timeout_s))}
      )
    elif step.user is not None:
      messages.append({"role": "user", "content": step.user})
  return machine.episode(messages)


class ScriptedAgent:
  """An agent that replays fixed replies in order (for tests and demonstrations).

  Raises IndexError if asked for more replies than it holds. `seen` records the messages it was
  shown at each call.
  """

  def __init__(self, replies: Sequence[str]):
    self.replies = list(replies)
    self.seen: list[list[Message]] = []

  def __call__(self, messages: list[Message]) -> str:
    if len(self.seen) >= len(self.replies):
      raise IndexError(
          f"ScriptedAgent: asked for reply {len(self.seen) + 1}, holds {len(self.replies)}"
      )
    self.seen.append(messages)
    return self.replies[len(self.seen) - 1]


@dataclasses.dataclass
class _Result:
  output: str
  timed_out: bool = False
  error: str | None = None


def result(output: str, timed_out: bool = False, error: Any = None) -> _Result:
  """A plain execution result with the executor interface's fields (for fakes and tests)."""
  return _Result(output, timed_out, None if error is None else str(error))
