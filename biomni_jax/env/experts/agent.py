"""Scripted expert agents: `(messages) -> reply` callables that solve embedded tasks through the protocol.

Turn logic is read off the conversation, so one expert serves many interleaved episodes:
  * no result in the last observation yet -> think (with the plan checklist) + execute tool code;
  * the last observation holds the tool result -> think + solution (the top-ranked candidate);
  * a failed or unreadable execution is retried once, then the expert answers its best guess.
Mistakes, drawn independently per decision from the expert's seeded generator, each with
probability mistake_rate / 3 (so about mistake_rate of episodes contain one):
  * extra turn:  look at the inputs first (an extra, harmless execute turn);
  * wrong candidate: answer the second-ranked (or another) candidate;
  * sloppy format: either a mis-written answer the grader scores 0, or a reply without its think
    block (correct answer, format reward 0).
"""

from __future__ import annotations

import threading

import numpy as np

from biomni_jax.env import protocol
from biomni_jax.env.experts.solvers import SOLVERS, result_from_observation

MAX_MAIN_ATTEMPTS = 2


def _task_prompt(messages: list[dict]) -> str:
  for m in messages:
    if m["role"] == "user":
      return m["content"]
  raise ValueError("expert: expected a user message holding the task prompt, found none")


def _plan(steps: list[tuple[str, str]]) -> str:
  marks = {"done": "✓", "todo": " ", "failed": "✗"}
  return "\n".join(f"{i}. [{marks[state]}] {text}" for i, (state, text) in enumerate(steps, 1))


class ScriptedExpert:
  """Expert for one task family (see the module docstring). Thread-safe."""

  def __init__(
      self,
      family: str,
      mistake_rate: float = 0.0,
      seed: int = 0,
      cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
  ):
    if family not in SOLVERS:
      raise KeyError(f"ScriptedExpert: expected a family in {sorted(SOLVERS)}, found {family!r}")
    if not 0.0 <= mistake_rate <= 1.0:
      raise ValueError(f"ScriptedExpert: expected mistake_rate in [0, 1], found {mistake_rate}")
    self.family, self.solver = family, SOLVERS[family]
    self.mistake_rate, self.cfg = float(mistake_rate), cfg
    self._rng = np.random.default_rng(seed)
    self._lock = threading.Lock()

  def _draw(self) -> bool:
    with self._lock:
      return bool(self._rng.random() < self.mistake_rate / 3)

  def _pick(self, n: int) -> int:
    with self._lock:
      return int(self._rng.integers(n))

  def _reply(self, think: str, action: str, body: str, drop_think: bool = False) -> str:
    tag = self.cfg.execute_tag if action == "execute" else self.cfg.answer_tag
    head = "" if drop_think else f"<{self.cfg.think_tag}>\n{think}\n</{self.cfg.think_tag}>\n"
    return f"{head}<{tag}>\n{body}\n</{tag}>"

  def __call__(self, messages: list[dict]) -> str:
    prompt = _task_prompt(messages)
    inputs = self.solver.parse(prompt)
    if inputs is None:
      raise ValueError(
          f"ScriptedExpert({self.family}): the prompt is not a {self.family} task: {prompt[:120]!r}"
      )
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    last = messages[-1]["content"] if messages[-1]["role"] == "user" and assistant else ""
    result = result_from_observation(last)
    ranked = self.solver.ranked(inputs, result) if result is not None else None
    if ranked:
      return self._answer(inputs, ranked)
    main_attempts = sum(1 for a in assistant if "RESULT ==" in a)
    if not assistant and self._draw():
      return self._reply(
          _plan(
              [
                  ("todo", "Look at the task's inputs"),
                  ("todo", "Run the tool that ranks the candidates"),
                  ("todo", "Answer with the top candidate in the requested format"),
              ]
          ),
          "execute",
          self.solver.explore_code(inputs),
      )
    if main_attempts < MAX_MAIN_ATTEMPTS:
      state = "failed" if main_attempts else "done"
      steps = [("done", "Read the task: inputs parsed from the prompt")]
      if main_attempts:
        steps.append((state, "Ranking call gave no usable result; retrying it"))
      steps += [
          ("todo", "Run the tool that ranks the candidates"),
          ("todo", "Answer with the top candidate in the requested format"),
      ]
      return self._reply(_plan(steps), "execute", self.solver.main_code(inputs))
    # Out of attempts: answer a guess so the episode still ends properly.
    guesses = self.solver.candidates(inputs)
    if not guesses:
      return self._reply(
          "No usable tool result and no candidates to guess from.", "solution", "unknown"
      )
    return self._answer(inputs, guesses, guessed=True)

  def _answer(self, inputs: dict, ranked: list, guessed: bool = False) -> str:
    choice = ranked[0]
    note = (
        "The tool output ranks this candidate first."
        if not guessed
        else "The tool gave no usable result; answering my best guess."
    )
    if self._draw():
      others = [c for c in (self.solver.candidates(inputs) or ranked) if c != choice]
      if len(ranked) > 1:
        choice = ranked[1]
      elif others:
        choice = others[self._pick(len(others))]
    text = self.solver.answer_text(inputs, choice)
    drop_think = False
    if self._draw():
      if self._pick(2) == 0:
        text = self.solver.sloppy_text(inputs, choice)
      else:
        drop_think = True
    plan = _plan(
        [
            ("done", "Read the task"),
            ("done", "Ranked the candidates with the tools"),
            ("done", "Answer with the top candidate in the requested format"),
        ]
    )
    return self._reply(f"{plan}\n{note}", "solution", text, drop_think=drop_think)


class RandomCandidateAgent:
  """Tool-less baseline: answers at once with a uniformly random candidate of the task (chance level)."""

  def __init__(
      self, family: str, seed: int = 0, cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG
  ):
    if family not in SOLVERS:
      raise KeyError(
          f"RandomCandidateAgent: expected a family in {sorted(SOLVERS)}, found {family!r}"
      )
    self.solver, self.cfg = SOLVERS[family], cfg
    self._rng = np.random.default_rng(seed)

  def __call__(self, messages: list[dict]) -> str:
    inputs = self.solver.parse(_task_prompt(messages))
    candidates = self.solver.candidates(inputs)
    text = "unknown"
    if candidates:
      text = self.solver.answer_text(inputs, candidates[int(self._rng.integers(len(candidates)))])
    cfg = self.cfg
    return (
        f"<{cfg.think_tag}>\nGuessing one candidate without tools.\n</{cfg.think_tag}>\n"
        f"<{cfg.answer_tag}>\n{text}\n</{cfg.answer_tag}>"
    )


def make_expert(
    family: str,
    mistake_rate: float = 0.0,
    seed: int = 0,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
) -> ScriptedExpert:
  return ScriptedExpert(family, mistake_rate, seed, cfg)
