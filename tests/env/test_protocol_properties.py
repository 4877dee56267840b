"""Property-based tests of the reply parser and the format reward on arbitrary model output.

Inputs are built from tag fragments (whole, partial, nested, unbalanced, in odd case, with non-ASCII
look-alikes) mixed with arbitrary text. The format reward is compared with a strict rule written
here independently, from its definition:

  format = 1 iff every assistant message is `<think>...</think>` followed by exactly one of
  `<execute>...</execute>` or `<answer_tag>...</answer_tag>`; no action inside think; only the last
  message holds the answer, and the last message must hold one.

Decisions the definition leaves open, taken as protocol.py documents them: text outside the
blocks is allowed, and tags match case-insensitively in ASCII only (`<THINK>` is a think tag; the
Kelvin sign in `<thin\\u212a>` does not make one).
"""

import re
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from biomni_jax.env import protocol
from biomni_jax.env.protocol import ProtocolConfig

SOLUTION_CFG = ProtocolConfig()
ANSWER_CFG = ProtocolConfig(answer_tag="answer")
CONFIGS = st.sampled_from([SOLUTION_CFG, ANSWER_CFG])

TAG_NAMES = ("think", "execute", "solution", "answer", "observation")
TAGS = [f"<{t}>" for t in TAG_NAMES] + [f"</{t}>" for t in TAG_NAMES]
# Odd case, partial tags, near misses, and characters whose case mapping is not ASCII: the Kelvin
# sign and the long s fold to k / s under Unicode case-insensitive matching, and "İ".lower() is two
# characters long (so an index found in text.lower() is not an index into text).
ODD_FRAGMENTS = [
    "<THINK>",
    "</Think>",
    "<EXECUTE>",
    "</Execute>",
    "<Solution>",
    "</SOLUTION>",
    "<ANSWER>",
    "<exec",
    "ute>",
    "</",
    "<",
    ">",
    "< think>",
    "<think >",
    "<thin\u212a>",
    "</thin\u212a>",
    "<\u017folution>",
    "</\u017folution>",
    "<execute\u0130>",
    "\u0130",
    "\u212a",
    "\ufffd",
    "\x00",
    "<|im_end|>",
    "\n",
    " ",
]
FRAGMENTS = st.one_of(
    st.sampled_from(TAGS),
    st.sampled_from(ODD_FRAGMENTS),
    st.text(max_size=12),
    st.text(alphabet="<>/ \n\u0130\u212aabcdehiklnorstuvx", max_size=12),
)
ARBITRARY_TEXT = st.lists(FRAGMENTS, max_size=24).map("".join)
# Block bodies without protocol tags: what a well-formed message holds (any characters, with the
# non-ASCII case troublemakers drawn often).
PLAIN = st.text(
    alphabet=st.one_of(
        st.characters(exclude_characters="<"), st.sampled_from("\u0130\u212a\u017f")
    ),
    max_size=30,
)


def well_formed_message(action: str):
  return st.builds(
      lambda lead, think, mid, body, tail, upper: (
          f"{lead}<{'THINK' if upper else 'think'}>{think}</think>{mid}<{action}>{body}</{action}>"
          f"{tail}"
      ),
      PLAIN,
      PLAIN,
      PLAIN,
      PLAIN,
      PLAIN,
      st.booleans(),
  )


def messages_strategy(cfg):
  """Lists of messages: mostly well-formed executes and answers, some arbitrary text."""
  message = st.one_of(
      well_formed_message(cfg.execute_tag),
      well_formed_message(cfg.answer_tag),
      ARBITRARY_TEXT,
  )
  return st.lists(message, max_size=5)


# ----------------------------------------------------------------------------- the strict rule
def strict_message_ok(message: str, is_last: bool, cfg: ProtocolConfig) -> bool:
  """One message against the definition, as a single anchored regular expression."""
  names = (cfg.think_tag, cfg.execute_tag, cfg.answer_tag)
  any_tag = "</?(?:" + "|".join(names) + ")>"
  no_tag = f"(?:(?!{any_tag}).)*"
  pattern = (
      f"{no_tag}<{cfg.think_tag}>{no_tag}</{cfg.think_tag}>{no_tag}"
      f"<({cfg.execute_tag}|{cfg.answer_tag})>{no_tag}</\\1>{no_tag}"
  )
  match = re.fullmatch(pattern, message, re.DOTALL | re.IGNORECASE | re.ASCII)
  if match is None:
    return False
  holds_answer = match.group(1).lower() == cfg.answer_tag
  return holds_answer == is_last


def strict_format(messages, cfg: ProtocolConfig) -> float:
  if not messages:
    return 0.0
  last = len(messages) - 1
  return float(all(strict_message_ok(m, i == last, cfg) for i, m in enumerate(messages)))


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- format reward
KELVIN_THINK = "<thin\u212a>t</thin\u212a><execute>x</execute>"


@FAST
@given(CONFIGS.flatmap(lambda cfg: st.tuples(st.just(cfg), messages_strategy(cfg))))
@example((SOLUTION_CFG, [KELVIN_THINK, "<think>t</think><solution>A</solution>"]))
def test_format_reward_is_zero_or_one_and_equals_the_strict_rule(cfg_and_messages):
  cfg, messages = cfg_and_messages
  got = protocol.format_reward(messages, cfg)
  assert got in (0.0, 1.0)
  assert got == strict_format(messages, cfg), messages


@FAST
@given(st.lists(st.text(max_size=40), max_size=4), st.integers(0, 3))
def test_well_formed_trajectories_score_one(thinks, n_exec):
  msgs = [
      f"<think>{t.replace('<', '')}</think>\n<execute>print({i})</execute>"
      for i, t in enumerate(thinks)
  ]
  msgs += ["<think>x</think><execute>y</execute>"] * n_exec + [
      "<think>ok</think><solution>A</solution>"
  ]
  assert protocol.format_reward(msgs) == 1.0
  # Moving the answer anywhere but the end, or dropping it, breaks the rule.
  assert protocol.format_reward(msgs[:-1]) == 0.0
  assert protocol.format_reward(msgs[-1:] + msgs) == 0.0


def test_non_ascii_look_alikes_are_not_tags():
  """The Kelvin sign lower-cases to k: `<thin\\u212a>` must not count as `<think>`."""
  assert protocol.format_reward([KELVIN_THINK, "<think>t</think><solution>A</solution>"]) == 0.0
  parsed = protocol.parse_reply("<think>t</think><\u017folution>A</\u017folution>")
  assert parsed.kind == "error" and parsed.repair == protocol.no_tags_message()
  assert protocol.extract_solution("<\u017folution>A</\u017folution>") is None


# ----------------------------------------------------------------------------- the parser
def check_parsed(text: str, cfg: ProtocolConfig) -> protocol.ParsedReply:
  parsed = protocol.parse_reply(text, cfg)
  assert parsed.kind in ("execute", "solution", "error")
  if parsed.kind == "execute":
    assert isinstance(parsed.code, str) and parsed.solution is None and parsed.repair is None
    assert protocol.extract_solution(text, cfg) is None  # routing and answer extraction agree
  elif parsed.kind == "solution":
    assert isinstance(parsed.solution, str) and parsed.code is None and parsed.repair is None
    assert protocol.extract_solution(text, cfg) == parsed.solution
  else:
    assert parsed.repair and parsed.code is None and parsed.solution is None
    if parsed.repair == protocol.no_tags_message(cfg):
      assert protocol.extract_solution(text, cfg) is None
  # The body the router takes appears verbatim in the reply.
  body = parsed.code if parsed.kind == "execute" else parsed.solution
  if body is not None:
    assert body in text
  if parsed.think is not None:
    assert parsed.think in text
  return parsed


@FAST
@given(ARBITRARY_TEXT, CONFIGS)
@example("<think>t</think><\u017folution>A</\u017folution>", SOLUTION_CFG)
@example("\u0130\u0130 why</think><execute>x</execute>", SOLUTION_CFG)
def test_parse_reply_never_raises_and_is_consistent_on_arbitrary_text(text, cfg):
  check_parsed(text, cfg)


@FAST
@given(st.data(), CONFIGS)
def test_a_message_that_passes_the_format_rule_is_routed_to_its_action(data, cfg):
  action = data.draw(st.sampled_from([cfg.execute_tag, cfg.answer_tag]))
  message = data.draw(st.one_of(well_formed_message(action), ARBITRARY_TEXT))
  if not strict_message_ok(message, action == cfg.answer_tag, cfg):
    return
  parsed = check_parsed(message, cfg)
  want = "execute" if action == cfg.execute_tag else "solution"
  assert parsed.kind == want, (message, parsed)
  body = re.search(
      f"<{action}>(.*?)</{action}>", message, re.DOTALL | re.IGNORECASE | re.ASCII
  ).group(1)
  assert (parsed.code if want == "execute" else parsed.solution) == body.strip()


@FAST
@given(PLAIN, PLAIN, st.sampled_from(["execute", "solution"]), CONFIGS)
@example("\u0130\u0130\u0130\u0130 reasoning", "A", "solution", SOLUTION_CFG)
def test_reasoning_opened_by_the_template_round_trips(think, body, action, cfg):
  """`reasoning</think><action>body</action>`: the reasoning and body come back stripped, whatever
  characters the reasoning holds (including ones whose lower case is longer, like "İ")."""
  action = cfg.answer_tag if action == "solution" else cfg.execute_tag
  parsed = protocol.parse_reply(f"{think}</think><{action}>{body}</{action}>", cfg)
  assert parsed.think == think.strip()
  assert (parsed.code if action == cfg.execute_tag else parsed.solution) == body.strip()


def test_dotted_capital_i_before_a_template_think_close():
  parsed = protocol.parse_reply("\u0130\u0130\u0130\u0130 reasoning</think><solution>A</solution>")
  assert parsed.kind == "solution" and parsed.solution == "A"
  assert parsed.think == "\u0130\u0130\u0130\u0130 reasoning"


@FAST
@given(st.lists(st.sampled_from(TAGS + ODD_FRAGMENTS[:12]), min_size=1, max_size=6), CONFIGS)
def test_a_reply_cut_anywhere_into_two_turns_parses_consistently(pieces, cfg):
  """A well-formed reply cut anywhere into two turns: each half parses on its own."""
  text = f"<think>a</think><{cfg.execute_tag}>x = 1</{cfg.execute_tag}>" + "".join(pieces)
  for cut in range(len(text) + 1):
    check_parsed(text[:cut], cfg)
    check_parsed(text[cut:], cfg)


def test_huge_outputs_parse_in_linear_time():
  """Thousands of unclosed tags in a long reply (a degenerate repetition) used to cost a regex scan
  per tag: 144k characters took 25 s. The episode loop parses on the event loop, so this stalls
  every episode of the pool."""
  started = time.perf_counter()
  for text in (
      "<think>x</think>" + "<execute>" * 16_000 + "a",
      "<think>" * 16_000,
      "</think>" + "<solution>" * 16_000,
      "x" * 1_000_000 + "</execute>",
  ):
    parsed = protocol.parse_reply(text)
    assert parsed.kind == "error"
    protocol.extract_solution(text)
    assert protocol.format_reward([text] * 3) == 0.0
  assert time.perf_counter() - started < 2.0
