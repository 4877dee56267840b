"""The text-level episode runner: message flow, observations, repairs and every way an episode ends."""

import contextlib
import io

import pytest

from biomni_jax.env import episode as ep
from biomni_jax.env import eval1, protocol
from biomni_jax.env.episode import ScriptedAgent, run_episode


class InProcessExecutor:
  """Test-only executor: exec() in one persistent namespace, capturing stdout. No isolation."""

  def __init__(self):
    self.namespace = {}
    self.calls = []

  def run(self, code, timeout_s):
    self.calls.append((code, timeout_s))
    buffer = io.StringIO()
    error = None
    with contextlib.redirect_stdout(buffer):
      try:
        exec(code, self.namespace)
      except Exception as e:  # reported to the agent, like the sandbox does
        error = f"{type(e).__name__}: {e}"
    return ep.result(buffer.getvalue(), error=error)


class FixedExecutor:

  def __init__(self, result):
    self._result = result

  def run(self, code, timeout_s):
    return self._result


def reply(action, body, think="plan"):
  return f"<think>{think}</think>\n<{action}>{body}</{action}>"


def test_solution_on_first_turn_ends_the_episode():
  agent = ScriptedAgent([reply("solution", "BRCA1")])
  out = run_episode(agent, "task?", InProcessExecutor(), system="SYS")
  assert out.termination == "solution" and out.solution == "BRCA1" and out.turns == 1
  assert out.messages == [
      {"role": "system", "content": "SYS"},
      {"role": "user", "content": "task?"},
      {"role": "assistant", "content": reply("solution", "BRCA1")},
  ]
  assert out.format_reward() == 1.0


def test_execute_then_solution_uses_a_persistent_namespace():
  executor = InProcessExecutor()
  agent = ScriptedAgent(
      [reply("execute", "x = 6 * 7"), reply("execute", "print(x)"), reply("solution", "42")]
  )
  out = run_episode(agent, "compute", executor, timeout_s=5.0)
  assert out.termination == "solution" and out.solution == "42" and out.turns == 3
  roles = [m["role"] for m in out.messages]
  assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
  assert (
      out.messages[2]["content"] == "<observation>[The code ran and printed nothing.]</observation>"
  )
  assert out.messages[4]["content"] == "<observation>42\n</observation>"
  assert executor.calls == [("x = 6 * 7", 5.0), ("print(x)", 5.0)]
  # the agent saw the observation before its third reply
  assert agent.seen[2][-1]["content"] == "<observation>42\n</observation>"
  assert out.format_reward() == 1.0


def test_code_errors_and_timeouts_come_back_as_observations():
  executor = InProcessExecutor()
  agent = ScriptedAgent([reply("execute", "print('a'); 1/0"), reply("solution", "x")])
  out = run_episode(agent, "t", executor)
  assert (
      out.messages[2]["content"]
      == "<observation>a\n\n[Error: ZeroDivisionError: division by zero]</observation>"
  )
  timed = run_episode(
      ScriptedAgent([reply("execute", "while True: pass"), reply("solution", "x")]),
      "t",
      FixedExecutor(ep.result("partial", timed_out=True)),
      timeout_s=2,
  )
  assert timed.messages[2]["content"] == (
      "<observation>partial\n[Execution stopped: it exceeded the time limit of 2 s.]</observation>"
  )


def test_long_output_is_cut_in_the_observation():
  out = run_episode(
      ScriptedAgent([reply("execute", "print('z' * 20000)"), reply("solution", "x")]),
      "t",
      InProcessExecutor(),
  )
  observation = out.messages[2]["content"]
  assert observation.count("z") == 10_000 and "only its first 10,000 characters" in observation


def test_one_parse_error_gets_a_repair_and_the_episode_goes_on():
  agent = ScriptedAgent(["just text", reply("solution", "A")])
  out = run_episode(agent, "t", InProcessExecutor())
  assert out.termination == "solution" and out.solution == "A" and out.parse_errors == 1
  assert out.messages[2] == {"role": "user", "content": protocol.no_tags_message()}
  assert out.format_reward() == 0.0  # the bad reply stays in the trajectory


def test_second_parse_error_ends_the_episode():
  both = "<think>t</think><execute>x</execute><solution>A</solution>"
  agent = ScriptedAgent(["no tags", reply("execute", "y = 1"), both, reply("solution", "never")])
  out = run_episode(agent, "t", InProcessExecutor())
  assert out.termination == "parse_errors" and out.solution is None and out.turns == 3
  assert out.messages[-1] == {"role": "user", "content": protocol.multiple_tags_message()}
  assert len(agent.seen) == 3


def test_unclosed_tag_counts_as_a_parse_error_and_is_not_executed():
  executor = InProcessExecutor()
  agent = ScriptedAgent(["<think>t</think><execute>print(1)", "<think>t</think><execute>print(2)"])
  out = run_episode(agent, "t", executor)
  assert out.termination == "parse_errors" and executor.calls == []
  assert "never closed" in out.messages[2]["content"]


def test_max_turns_ends_the_episode_without_running_the_last_code():
  executor = InProcessExecutor()
  agent = ScriptedAgent([reply("execute", f"print({i})") for i in range(5)])
  out = run_episode(agent, "t", executor, max_turns=3)
  assert out.termination == "max_turns" and out.turns == 3 and out.solution is None
  # The third reply's code would produce an observation no reply reads: it is not run.
  assert [code for code, _ in executor.calls] == ["print(0)", "print(1)"]
  assert out.messages[-2]["content"] == "<observation>1\n</observation>"
  assert out.messages[-1] == {"role": "assistant", "content": reply("execute", "print(2)")}
  assert len(out.assistant_messages) == 3 and out.format_reward() == 0.0


def test_a_repair_on_the_last_turn_is_kept_and_the_episode_ends():
  agent = ScriptedAgent([reply("execute", "x = 1"), "no tags"])
  out = run_episode(agent, "t", InProcessExecutor(), max_turns=2)
  assert (out.termination, out.turns, out.parse_errors) == ("max_turns", 2, 1)
  assert out.messages[-1] == {"role": "user", "content": protocol.no_tags_message()}


def test_protocol_machine_steps_by_hand():
  machine = ep.ProtocolMachine(max_turns=3, timeout_s=2.0)
  assert machine.on_reply(reply("execute", "a = 1")) == ep.Step(code="a = 1")
  assert machine.observation(ep.result("", timed_out=True)) == (
      "<observation>[Execution stopped: it exceeded the time limit of 2 s.]</observation>"
  )
  assert machine.on_reply("no tags") == ep.Step(user=protocol.no_tags_message())
  assert machine.awaiting_reply and (machine.turns, machine.parse_errors) == (2, 1)
  assert machine.on_reply(reply("solution", "42")) == ep.Step()
  assert (machine.termination, machine.solution, machine.turns) == ("solution", "42", 3)
  with pytest.raises(RuntimeError, match="after the episode ended"):
    machine.on_reply(reply("solution", "43"))
  stopped = ep.ProtocolMachine()
  stopped.stop("context_limit")
  assert stopped.episode([]).termination == "context_limit" and stopped.turns == 0


def test_answer_tag_setting_is_followed():
  cfg = protocol.ProtocolConfig(answer_tag="answer")
  out = run_episode(
      ScriptedAgent([reply("solution", "A"), reply("answer", "B")]), "t", InProcessExecutor(), cfg
  )
  assert out.solution == "B" and out.parse_errors == 1 and out.turns == 2


def test_bad_arguments_are_reported():
  with pytest.raises(ValueError, match="max_turns"):
    run_episode(ScriptedAgent([]), "t", InProcessExecutor(), max_turns=0)
  with pytest.raises(TypeError, match="turn 1"):
    run_episode(lambda messages: None, "t", InProcessExecutor())


def test_oracle_agent_scores_one_on_a_real_style_task():
  """An agent that computes in code, then answers in the task's format, scores 1 with the grader."""
  prompt = (
      "Phenotypes: HP:1\nCandidate genes: ENSG1, ENSG2\nOutput format: {'causal_gene': [gene1]}"
  )
  agent = ScriptedAgent(
      [
          reply(
              "execute",
              "candidates = ['ENSG1', 'ENSG2']\nprint(candidates[1])",
              think="1. [ ] pick",
          ),
          reply(
              "solution",
              eval1.format_answer("patient_gene_detection", "ENSG2"),
              think="1. [✓] pick",
          ),
      ]
  )
  out = run_episode(agent, prompt, InProcessExecutor(), system=protocol.system_prompt())
  assert eval1.grade("patient_gene_detection", out.solution, "ENSG2") == 1.0
  assert eval1.grade_response("patient_gene_detection", out.assistant_messages[-1], "ENSG2") == 1.0
  assert out.format_reward() + eval1.grade("patient_gene_detection", out.solution, "ENSG2") == 2.0


def test_context_cap_ends_the_episode_before_the_next_reply():
  agent = ScriptedAgent([reply("execute", "print('y' * 500)"), reply("solution", "never")])
  out = run_episode(agent, "t", InProcessExecutor(), max_context_chars=400)
  assert out.termination == "context_limit" and out.turns == 1 and out.solution is None
  assert len(agent.seen) == 1 and out.messages[-1]["content"].startswith("<observation>yyy")
