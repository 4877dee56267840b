"""The agent protocol: reply parsing and repairs, observations, the format reward, the prompt."""

import pytest

from biomni_jax.env import protocol
from biomni_jax.env.protocol import ProtocolConfig, format_reward, parse_reply

ANSWER_CFG = ProtocolConfig(answer_tag="answer")

EXEC = "<think>plan 1. [ ] load</think>\n<execute>print(1)</execute>"
SOL = "<think>1. [✓] load</think>\n<solution>BRCA1</solution>"


# ----------------------------------------------------------------------------- config


def test_config_rejects_unknown_answer_tag():
  with pytest.raises(ValueError, match="answer_tag"):
    ProtocolConfig(answer_tag="final")


def test_config_rejects_clashing_tags():
  with pytest.raises(ValueError, match="distinct"):
    ProtocolConfig(answer_tag="solution", execute_tag="solution")


# ----------------------------------------------------------------------------- parsing


def test_parse_execute_reply():
  parsed = parse_reply(EXEC)
  assert parsed.kind == "execute"
  assert parsed.code == "print(1)"
  assert parsed.think == "plan 1. [ ] load"
  assert parsed.solution is None and parsed.repair is None


def test_parse_solution_reply():
  parsed = parse_reply(SOL)
  assert parsed == protocol.ParsedReply(kind="solution", think="1. [✓] load", solution="BRCA1")


def test_parse_keeps_multiline_code_and_language_switch():
  parsed = parse_reply("<think>t</think><execute>\n#!BASH\necho hi\nls\n</execute>")
  assert parsed.code == "#!BASH\necho hi\nls"


def test_parse_tags_are_case_insensitive():
  assert parse_reply("<think>t</think><EXECUTE>x=1</Execute>").code == "x=1"


def test_both_tags_gets_the_multiple_tags_repair():
  parsed = parse_reply("<think>t</think><execute>x</execute><solution>A</solution>")
  assert parsed.kind == "error"
  assert parsed.repair == (
      "Multiple tags (<execute> and <solution>) detected.\nPlease include only one of them in your response."
  )
  assert parsed.code is None and parsed.solution is None


def test_no_tags_gets_the_no_tags_repair():
  for reply in ("The answer is BRCA1.", "<think>only thinking</think>", ""):
    parsed = parse_reply(reply)
    assert parsed.kind == "error"
    assert parsed.repair == (
        "There are no tags (e.g. <execute><solution>). Please follow the instruction, fix and update."
    )


def test_unclosed_tag_gets_a_clear_repair():
  parsed = parse_reply("<think>t</think><execute>print(1)")
  assert parsed.kind == "error"
  assert "<execute> tag was opened but never closed with </execute>" in parsed.repair
  parsed = parse_reply("<think>t</think><solution>BRCA")
  assert parsed.kind == "error" and "</solution>" in parsed.repair


def test_closing_tag_without_opening_gets_a_repair():
  parsed = parse_reply("<think>t</think>print(1)</execute>")
  assert parsed.kind == "error"
  assert "without an opening <execute>" in parsed.repair


def test_answer_tag_setting_changes_parser_and_repairs():
  assert parse_reply("<think>t</think><answer>A</answer>", ANSWER_CFG).solution == "A"
  # With answer_tag="answer", <solution> is plain text: no tags at all.
  parsed = parse_reply("<think>t</think><solution>A</solution>", ANSWER_CFG)
  assert parsed.kind == "error" and parsed.repair.startswith(
      "There are no tags (e.g. <execute><answer>)"
  )
  both = parse_reply("<execute>x</execute><answer>A</answer>", ANSWER_CFG)
  assert both.repair.startswith("Multiple tags (<execute> and <answer>) detected.")


def test_extract_solution_and_stop_strings():
  assert protocol.extract_solution("blah <solution>  rs123 \n</solution>") == "rs123"
  assert protocol.extract_solution("<solution>unclosed") is None
  assert protocol.extract_solution("<answer>A</answer>", ANSWER_CFG) == "A"
  assert protocol.stop_strings() == ["</execute>", "</solution>"]
  assert protocol.stop_strings(ANSWER_CFG) == ["</execute>", "</answer>"]


# ----------------------------------------------------------------------------- observations


def test_observation_short_output_is_wrapped_verbatim():
  assert protocol.format_observation("hello\n") == "<observation>hello\n</observation>"


def test_observation_at_the_limit_is_not_cut():
  text = "x" * 10_000
  assert protocol.format_observation(text) == f"<observation>{text}</observation>"


def test_observation_over_the_limit_keeps_first_chars_and_says_so():
  text = "a" * 10_000 + "TAIL"
  obs = protocol.format_observation(text)
  assert obs.startswith("<observation>") and obs.endswith("a</observation>")
  assert "TAIL" not in obs
  assert "10,004 characters" in obs and "first 10,000" in obs
  note, kept = obs[len("<observation>") : -len("</observation>")].split("\n", 1)
  assert kept == "a" * 10_000
  assert "cut" in note or "only its first" in note


def test_observation_limit_is_configurable():
  obs = protocol.format_observation("abcdef", ProtocolConfig(max_observation_chars=3))
  assert obs.endswith("\nabc</observation>") and "6 characters" in obs


# ----------------------------------------------------------------------------- format reward
# One test per rule of docs/recipe.md section 1.3 "The reward".


def test_format_valid_trajectory_scores_one():
  assert format_reward([EXEC, EXEC, SOL]) == 1.0
  assert format_reward([SOL]) == 1.0


def test_format_free_text_around_blocks_is_allowed():
  assert format_reward(["<think>t</think> I will run this: <execute>x</execute>\n", SOL]) == 1.0


def test_format_empty_trajectory_scores_zero():
  assert format_reward([]) == 0.0


def test_format_rule_every_message_starts_with_think():
  assert format_reward(["<execute>x</execute>", SOL]) == 0.0
  assert format_reward([EXEC, "<solution>A</solution>"]) == 0.0


def test_format_rule_think_must_come_first():
  assert format_reward(["<execute>x</execute><think>t</think>", SOL]) == 0.0


def test_format_rule_exactly_one_action_per_message():
  assert format_reward(["<think>t</think>no action", SOL]) == 0.0
  assert format_reward(["<think>t</think><execute>a</execute><execute>b</execute>", SOL]) == 0.0
  assert format_reward(["<think>t</think><execute>a</execute><solution>A</solution>"]) == 0.0


def test_format_rule_action_must_be_closed_by_its_own_tag():
  assert format_reward(["<think>t</think><execute>a</solution>"]) == 0.0
  assert format_reward(["<think>t</think><execute>a", SOL]) == 0.0


def test_format_rule_no_action_inside_think():
  inside = "<think>I could <execute>x</execute></think><execute>x</execute>"
  assert format_reward([inside, SOL]) == 0.0
  assert format_reward(["<think>maybe <solution>A</solution></think><solution>A</solution>"]) == 0.0


def test_format_rule_no_second_think():
  assert format_reward(["<think>a</think><think>b</think><execute>x</execute>", SOL]) == 0.0
  assert format_reward(["<think>a</think><execute>x</execute><think>b</think>", SOL]) == 0.0


def test_format_rule_only_last_message_holds_solution():
  assert format_reward([SOL, SOL]) == 0.0
  assert format_reward([EXEC, SOL, EXEC, SOL]) == 0.0


def test_format_rule_last_message_must_hold_solution():
  assert format_reward([EXEC]) == 0.0
  assert format_reward([EXEC, EXEC]) == 0.0


def test_format_one_bad_message_anywhere_zeroes_the_trajectory():
  assert format_reward([EXEC, "no tags at all", EXEC, SOL]) == 0.0


def test_format_tags_count_case_insensitively():
  assert format_reward(["<THINK>t</Think><Execute>x</EXECUTE>", SOL]) == 1.0


def test_format_follows_answer_tag_setting():
  sol_answer = "<think>t</think><answer>A</answer>"
  assert format_reward([EXEC, sol_answer], ANSWER_CFG) == 1.0
  assert format_reward([EXEC, SOL], ANSWER_CFG) == 0.0
  assert format_reward([EXEC, sol_answer]) == 0.0


# ----------------------------------------------------------------------------- system prompt


def test_system_prompt_lists_resources_and_rules():
  tools = [
      {
          "name": "get_hpo_names",
          "description": "Names of HPO terms.",
          "parameters": {
              "type": "object",
              "properties": {"hpo_ids": {"type": "list[str]", "description": "HPO term ids"}},
              "required": ["hpo_ids"],
          },
      },
      {
          "name": "find_restriction_sites",
          "description": "Cut positions of an enzyme.",
          "parameters": [
              {"name": "sequence", "type": "str", "description": "DNA"},
              {"name": "enzyme", "type": "str", "required": False, "default": "EcoRI"},
          ],
      },
  ]
  text = protocol.system_prompt(tools, [("hp.obo", "the HPO ontology")], [("Bio", "Biopython")])
  for needle in (
      "1. [ ]",
      "[✓]",
      "[✗]",
      "<execute>",
      "<solution>",
      "<think>",
      "#!R",
      "#!BASH",
      "EXACTLY ONE",
      "- get_hpo_names",
      "hpo_ids (list[str]): HPO term ids",
      "enzyme (str), optional, default 'EcoRI'",
      "- hp.obo: the HPO ontology",
      "- Bio: Biopython",
  ):
    assert needle in text, needle


def test_system_prompt_follows_answer_tag_and_accepts_objects():
  class Tool:
    name = "f"
    description = "does f"
    parameters = None

  text = protocol.system_prompt([Tool()], cfg=ANSWER_CFG)
  assert "<answer>" in text and "<solution>" not in text
  assert "- f\n  does f" in text


def test_system_prompt_rejects_nameless_tool():
  with pytest.raises(ValueError, match="name"):
    protocol.system_prompt([{"description": "x"}])


def test_tags_mentioned_inside_think_do_not_route_the_reply():
  parsed = parse_reply(
      "<think>I will use <execute> tags, then <solution>.</think>\n<execute>x = 1</execute>"
  )
  assert parsed.kind == "execute" and parsed.code == "x = 1"
  assert parsed.think == "I will use <execute> tags, then <solution>."
  only_in_think = parse_reply("<think>answer with <solution>A</solution></think>")
  assert only_in_think.kind == "error" and only_in_think.repair == protocol.no_tags_message()


def test_think_opened_by_the_chat_template_is_recognised():
  parsed = parse_reply("reasoning here\n</think>\n<solution>A</solution>")
  assert parsed.kind == "solution" and parsed.think == "reasoning here" and parsed.solution == "A"


def test_system_prompt_accepts_biomni_style_parameter_lists():
  tool = {
      "name": "get_hpo_names",
      "description": "Names of HPO terms.",
      "module": "biomni_jax.env.tools",
      "required_parameters": [{"name": "hpo_terms", "type": "List[str]", "description": "ids"}],
      "optional_parameters": [{"name": "data_lake_path", "type": "str", "default": "/lake"}],
  }
  text = protocol.system_prompt([tool])
  assert "- get_hpo_names (from biomni_jax.env.tools import get_hpo_names)" in text
  assert "    - hpo_terms (List[str]): ids" in text
  assert "    - data_lake_path (str), optional, default '/lake'" in text


def test_extract_solution_ignores_answers_mentioned_while_reasoning():
  text = "<think>format: <solution>X</solution></think><solution>rs1</solution>"
  assert protocol.extract_solution(text) == "rs1"
