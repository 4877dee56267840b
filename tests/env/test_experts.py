"""Scripted experts solve embedded tasks through the protocol and tools; the tool-less baseline is at chance."""

import math

import numpy as np
import pytest

from biomni_jax.env import protocol
from biomni_jax.env.episode import result, run_episode
from biomni_jax.env.experts import (
    ANSWER_MARKER,
    SOLVERS,
    InProcessExecutor,
    RandomCandidateAgent,
    ScriptedExpert,
)
from biomni_jax.env.tasks import get_family, sandbox_setup_code
from biomni_jax.env.tools import import_strings, tool_specs

FAMILIES = ["rare_disease_diagnosis", "patient_gene_detection", "locus_causal_gene", "sequence_qa"]
N_VAL = 100


def _tools(family):
  return list(family.tools) + ["get_hpo_names", "gc_content", "ensembl_to_gene_symbol"]


def _play(name, agent, n=N_VAL, cfg=protocol.DEFAULT_CONFIG):
  family = get_family(name)
  episodes, scores = [], []
  for x in family.instances("val", n):
    executor = InProcessExecutor(_tools(family), setup_code=sandbox_setup_code(x))
    ep = run_episode(agent, x.prompt, executor, cfg=cfg, max_turns=8)
    episodes.append(ep)
    scores.append(family.grade(ep.solution, x.answer) if ep.solution is not None else 0.0)
  return family, episodes, np.array(scores)


@pytest.mark.parametrize("name", FAMILIES)
def test_expert_without_mistakes_solves_at_least_95_percent_of_val(name):
  _, episodes, scores = _play(name, ScriptedExpert(name, mistake_rate=0.0, seed=0))
  assert scores.mean() >= 0.95, scores.mean()
  assert all(ep.format_reward() == 1.0 and ep.termination == "solution" for ep in episodes)
  first = episodes[0].assistant_messages
  # think + execute tool code, then think + solution.
  assert len(first) == 2 and "<execute>" in first[0] and "<solution>" in first[1]
  assert "1. [✓]" in first[0]
  assert episodes[0].messages[2]["content"].startswith("<observation>")


@pytest.mark.parametrize("name", FAMILIES)
def test_random_candidate_baseline_scores_about_chance(name):
  family, episodes, scores = _play(name, RandomCandidateAgent(name, seed=0))
  solver = SOLVERS[name]
  chance = np.mean(
      [1.0 / len(solver.candidates(solver.parse(x.prompt))) for x in family.instances("val", N_VAL)]
  )
  sigma = math.sqrt(chance * (1 - chance) / N_VAL)
  assert abs(scores.mean() - chance) <= 3.5 * sigma + 0.01, (scores.mean(), chance)
  assert scores.mean() < 0.5
  assert all(ep.turns == 1 for ep in episodes)


def test_mistakes_are_seeded_and_cost_reward():
  name = "patient_gene_detection"
  _, eps_a, scores_a = _play(name, ScriptedExpert(name, mistake_rate=0.6, seed=3), n=60)
  _, eps_b, scores_b = _play(name, ScriptedExpert(name, mistake_rate=0.6, seed=3), n=60)
  assert [e.messages for e in eps_a] == [e.messages for e in eps_b]
  assert 0.5 < scores_a.mean() < 0.95
  formats = [e.format_reward() for e in eps_a]
  assert 0.0 in formats and 1.0 in formats
  assert any(e.turns == 3 for e in eps_a), "some episodes take an extra look first"
  _, _, scores_c = _play(name, ScriptedExpert(name, mistake_rate=0.6, seed=4), n=60)
  assert not np.array_equal(scores_a, scores_c)


def test_expert_follows_the_answer_tag_setting():
  cfg = protocol.ProtocolConfig(answer_tag="answer")
  _, episodes, scores = _play(
      "rare_disease_diagnosis", ScriptedExpert("rare_disease_diagnosis", cfg=cfg), n=5, cfg=cfg
  )
  assert scores.mean() == 1.0 and "<answer>" in episodes[0].assistant_messages[-1]
  assert all(ep.format_reward(cfg) == 1.0 for ep in episodes)


class _BrokenExecutor:

  def run(self, code, timeout_s):
    return result("", error="worker died")


def test_expert_retries_a_failed_execution_once_then_answers_a_guess():
  family = get_family("locus_causal_gene")
  x = family.instance("val", 0)
  ep = run_episode(ScriptedExpert("locus_causal_gene"), x.prompt, _BrokenExecutor(), max_turns=8)
  assert ep.termination == "solution" and ep.turns == 3 and ep.format_reward() == 1.0
  assert "[✗]" in ep.assistant_messages[1]


def test_expert_rejects_a_prompt_of_another_family():
  with pytest.raises(ValueError, match="not a rare_disease_diagnosis task"):
    ScriptedExpert("rare_disease_diagnosis")([{"role": "user", "content": "What is 2 + 2?"}])


def _sandbox_pool():
  try:
    from biomni_jax.env.sandbox import SandboxPool
  except ImportError as exc:  # the sandbox package is optional for this test file
    pytest.skip(f"sandbox unavailable: {exc}")
  return SandboxPool(max_workers=1)


@pytest.mark.parametrize(
    "n", [pytest.param(3, id="smoke"), pytest.param(100, id="full", marks=pytest.mark.slow)]
)
def test_experts_through_the_real_sandbox(n):
  with _sandbox_pool() as pool:
    for name in FAMILIES:
      family = get_family(name)
      expert = ScriptedExpert(name)
      scores = []
      for x in family.instances("val", n):
        session = pool.open(
            tools=import_strings(tool_specs(_tools(family))), setup_code=sandbox_setup_code(x)
        )
        try:
          ep = run_episode(expert, x.prompt, session, max_turns=6, timeout_s=120)
        finally:
          session.close()
        scores.append(family.grade(ep.solution, x.answer) if ep.solution is not None else 0.0)
      assert np.mean(scores) >= 0.95, (name, scores)


@pytest.mark.parametrize("name", FAMILIES)
def test_main_call_prints_the_solution_last_on_its_own_line(name):
  """The answer a correct expert submits is the observation's last line, after the ANSWER_MARKER line,
  so the text to copy sits at a fixed distance before the solution and tokenizes the same in both places.
  """
  _, episodes, scores = _play(name, ScriptedExpert(name, mistake_rate=0.0, seed=0), n=20)
  checked = 0
  for ep, score in zip(episodes, scores):
    if score != 1.0:
      continue
    observation = ep.messages[-2]["content"]
    body = observation.removeprefix("<observation>").removesuffix("</observation>").rstrip("\n")
    lines = body.split("\n")
    assert lines[-2:] == [ANSWER_MARKER, ep.solution], (name, lines[-3:], ep.solution)
    checked += 1
  assert checked >= 19


@pytest.mark.parametrize("name", FAMILIES)
def test_answer_follows_the_same_token_in_the_observation_and_the_solution(name):
  """With the demo's tokenizer the printed answer and the solution's answer are the same tokens after
  the same token (`>\n`), so a copy can find the answer's first token by the token before it."""
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.train.base_model import DEMO_BASE

  tokenizer = load_tokenizer(DEMO_BASE)
  _, episodes, scores = _play(name, ScriptedExpert(name, mistake_rate=0.0, seed=0), n=5)
  checked = 0
  for ep, score in zip(episodes, scores):
    if score != 1.0:
      continue
    # Both copies end a line (before `</observation>` and `</solution>`); a BPE merges the newline.
    answer = tokenizer.encode(ep.solution + "\n", add_special_tokens=False)
    spans = []
    for text in (ep.messages[-2]["content"], ep.messages[-1]["content"]):
      ids = tokenizer.encode(text, add_special_tokens=False)
      starts = [i for i in range(1, len(ids)) if ids[i : i + len(answer)] == answer]
      assert starts, (name, text[-200:])
      spans.append(ids[starts[-1] - 1])
    assert spans[0] == spans[1] == tokenizer.encode(">\n", add_special_tokens=False)[0], (
        name,
        [tokenizer.decode([t]) for t in spans],
    )
    checked += 1
  assert checked >= 4
