"""A synchronous, text-level episode: one agent, one task prompt, one code executor.

Used by scripted experts, text-level teachers and evaluation. (The RL rollout pool works on token
ids and runs many episodes at once; it applies the same rules.)

Loop, per turn: ask the agent for one reply given the messages so far; append it; then
  - an answer block ends the episode (termination "solution");
  - an execute block runs in the executor and its output comes back as a user
    `<observation>...</observation>` message;
  - a parse error gets the protocol's repair message as a user message; the second parse error of
    the episode ends it ("parse_errors").
Running out of turns ends it ("max_turns"), and so does a conversation grown past an optional
character cap before the next reply ("context_limit"; token-level runners cap tokens instead).
A turn is one assistant reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from biomni_jax.env import protocol

Message = dict[str, str]
Termination = Literal["solution", "max_turns", "parse_errors", "context_limit"]

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
  termination: why it ended: "solution", "max_turns", "parse_errors" or "context_limit".
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
  messages: list[Message] = []
  if system is not None:
    messages.append({"role": "system", "content": system})
  messages.append({"role": "user", "content": instance_prompt})
  parse_errors = 0
  for turn in range(1, max_turns + 1):
    if (
        max_context_chars is not None
        and sum(len(m["content"]) for m in messages) > max_context_chars
    ):
      return Episode(messages, None, turn - 1, "context_limit", parse_errors)
    reply = agent([dict(m) for m in messages])
    if not isinstance(reply, str):
      raise TypeError(
          f"run_episode: the agent must return str, returned {type(reply).__name__} at turn {turn}"
      )
    messages.append({"role": "assistant", "content": reply})
    parsed = protocol.parse_reply(reply, cfg)
    if parsed.kind == "solution":
      return Episode(messages, parsed.solution, turn, "solution", parse_errors)
    if parsed.kind == "error":
      parse_errors += 1
      messages.append({"role": "user", "content": parsed.repair})
      if parse_errors >= MAX_PARSE_ERRORS:
        return Episode(messages, None, turn, "parse_errors", parse_errors)
      continue
    result = executor.run(parsed.code, timeout_s)
    observation = protocol.format_observation(observation_text(result, timeout_s), cfg)
    messages.append({"role": "user", "content": observation})
  return Episode(messages, None, max_turns, "max_turns", parse_errors)


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
