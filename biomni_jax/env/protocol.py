"""The agent protocol: system prompt, reply parsing, observations and the format reward.

An assistant reply is `<think>reasoning</think>` followed by exactly one action:
`<execute>code</execute>` (run code, get `<observation>output</observation>` back as a user turn)
or `<solution>answer</solution>` (end the episode). Generation stops at the action's closing tag,
so a well-formed reply ends with it; the sampler must keep the stop string in the reply text.

The answer tag is a setting (`solution`, Biomni's word, or `answer`, the Biomni-R0 article's),
and every function here follows it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

ReplyKind = Literal["execute", "solution", "error"]

_ALLOWED_ANSWER_TAGS = ("solution", "answer")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
  """Tag names and limits of the protocol.

  answer_tag: "solution" (Biomni) or "answer" (the Biomni-R0 article's wording).
  execute_tag: tag wrapping code to run.
  think_tag: tag wrapping reasoning (Qwen3's own).
  max_observation_chars: observations longer than this are cut to their first this-many chars.
  """

  answer_tag: str = "solution"
  execute_tag: str = "execute"
  think_tag: str = "think"
  max_observation_chars: int = 10_000

  def __post_init__(self):
    if self.answer_tag not in _ALLOWED_ANSWER_TAGS:
      raise ValueError(
          f"ProtocolConfig.answer_tag: expected one of {_ALLOWED_ANSWER_TAGS}, found {self.answer_tag!r}"
      )
    tags = (self.answer_tag, self.execute_tag, self.think_tag)
    if len(set(tags)) != 3 or not all(re.fullmatch(r"[a-z_]+", t) for t in tags):
      raise ValueError(f"ProtocolConfig: expected three distinct lowercase tag names, found {tags}")
    if self.max_observation_chars <= 0:
      raise ValueError(
          f"ProtocolConfig.max_observation_chars: expected > 0, found {self.max_observation_chars}"
      )


DEFAULT_CONFIG = ProtocolConfig()


# ----------------------------------------------------------------------------- repair messages
# The first two match the Biomni-R0 rollout code word for word (including the newline in the
# first), because the RL-trained policy has seen exactly these strings.


def multiple_tags_message(cfg: ProtocolConfig = DEFAULT_CONFIG) -> str:
  """Repair message for a reply holding both an execute and an answer tag."""
  return (
      f"Multiple tags (<{cfg.execute_tag}> and <{cfg.answer_tag}>) detected.\n"
      "Please include only one of them in your response."
  )


def no_tags_message(cfg: ProtocolConfig = DEFAULT_CONFIG) -> str:
  """Repair message for a reply holding neither an execute nor an answer tag."""
  return (
      f"There are no tags (e.g. <{cfg.execute_tag}><{cfg.answer_tag}>). "
      "Please follow the instruction, fix and update."
  )


def unclosed_tag_message(tag: str, cfg: ProtocolConfig = DEFAULT_CONFIG) -> str:
  """Repair message for `<tag>` opened but never closed (e.g. the reply hit the token limit)."""
  return (
      f"The <{tag}> tag was opened but never closed with </{tag}>. "
      f"End every <{tag}> block with </{tag}> and reply again with exactly one "
      f"<{cfg.execute_tag}> or <{cfg.answer_tag}> block."
  )


def unopened_tag_message(tag: str, cfg: ProtocolConfig = DEFAULT_CONFIG) -> str:
  """Repair message for `</tag>` found without a preceding `<tag>`."""
  return (
      f"Found </{tag}> without an opening <{tag}>. Wrap the block as <{tag}>...</{tag}> and reply "
      f"again with exactly one <{cfg.execute_tag}> or <{cfg.answer_tag}> block."
  )


# ----------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class ParsedReply:
  """One assistant reply split into its parts.

  kind: "execute" (code is set), "solution" (solution is set) or "error" (repair is set: the
    user message to send back).
  think: the reasoning, stripped (see parse_reply); None if there is none.
  """

  kind: ReplyKind
  think: str | None = None
  code: str | None = None
  solution: str | None = None
  repair: str | None = None


# Tags match case-insensitively in ASCII only. Unicode case mapping would make the Kelvin sign a "k"
# (`<thin\u212a>` a think tag) and, since "\u0130".lower() is two characters, would shift every
# index found in text.lower() against text.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(text: str) -> str:
  """text with A-Z lower-cased and every other character kept (same length, same indices)."""
  return text.translate(_ASCII_LOWER)


def _first_block_span(tag: str, text: str) -> tuple[int, int, str] | None:
  """(start, end, body) of the first `<tag>body</tag>` in text, or None.

  The first opening tag with a closing tag after it, closed by the first such closing tag (what
  the regex `<tag>(.*?)</tag>` finds), in linear time: if the first opening tag has no closing
  tag after it no later one has, so only one opening tag is ever tried. (A regex search retries
  from every opening tag: quadratic on degenerate replies of thousands of unclosed tags.)
  """
  lower = _ascii_lower(text)
  open_tag, close_tag = f"<{tag}>", f"</{tag}>"
  start = lower.find(open_tag)
  if start < 0:
    return None
  close_at = lower.find(close_tag, start + len(open_tag))
  if close_at < 0:
    return None
  return start, close_at + len(close_tag), text[start + len(open_tag) : close_at]


def _first_block(tag: str, text: str) -> str | None:
  span = _first_block_span(tag, text)
  return span[2].strip() if span else None


def _split_think(text: str, cfg: ProtocolConfig) -> tuple[str | None, str]:
  """(stripped reasoning or None, the reply with the reasoning removed)."""
  open_tag, close_tag = f"<{cfg.think_tag}>", f"</{cfg.think_tag}>"
  span = _first_block_span(cfg.think_tag, text)
  if span:
    start, end, body = span
    return body.strip(), text[:start] + text[end:]
  lower = _ascii_lower(text)
  close_at = lower.find(close_tag)
  if close_at >= 0 and open_tag not in lower[:close_at]:
    return text[:close_at].strip(), text[close_at + len(close_tag) :]
  return None, text


def parse_reply(text: str, cfg: ProtocolConfig = DEFAULT_CONFIG) -> ParsedReply:
  """Split one assistant reply into think / execute code / solution, or say how to repair it.

  Tags match case-insensitively (ASCII letters only). The reasoning (the first think block; or everything before a
  `</think>` whose opening tag the chat template already supplied) is set aside first, so tags
  merely mentioned while reasoning do not route the reply. In the rest: both action tags -> error
  (multiple tags); neither -> error (no tags); an action tag opened but not closed, or closed but
  not opened -> error. Otherwise the first complete action block is taken. Placement rules (think
  first, nothing inside think) are the format reward's business, not the router's.
  """
  if not isinstance(text, str):
    raise TypeError(f"parse_reply: expected the reply as str, found {type(text).__name__}")
  think, text = _split_think(text, cfg)
  lower = _ascii_lower(text)
  ex, ans = cfg.execute_tag, cfg.answer_tag
  has_execute = f"<{ex}>" in lower or f"</{ex}>" in lower
  has_answer = f"<{ans}>" in lower or f"</{ans}>" in lower

  def error(message: str) -> ParsedReply:
    return ParsedReply(kind="error", think=think, repair=message)

  if has_execute and has_answer:
    return error(multiple_tags_message(cfg))
  if not has_execute and not has_answer:
    return error(no_tags_message(cfg))
  tag = ex if has_execute else ans
  if f"<{tag}>" not in lower:
    return error(unopened_tag_message(tag, cfg))
  body = _first_block(tag, text)
  if body is None:
    return error(unclosed_tag_message(tag, cfg))
  if has_execute:
    return ParsedReply(kind="execute", think=think, code=body)
  return ParsedReply(kind="solution", think=think, solution=body)


def extract_solution(text: str, cfg: ProtocolConfig = DEFAULT_CONFIG) -> str | None:
  """Stripped text of the first complete answer block outside the reasoning, or None."""
  return _first_block(cfg.answer_tag, _split_think(text, cfg)[1])


def stop_strings(cfg: ProtocolConfig = DEFAULT_CONFIG) -> list[str]:
  """Strings at which the sampler ends a turn (kept in the reply)."""
  return [f"</{cfg.execute_tag}>", f"</{cfg.answer_tag}>"]


# ----------------------------------------------------------------------------- observations


def format_observation(output: str, cfg: ProtocolConfig = DEFAULT_CONFIG) -> str:
  """Wrap execution output as the user turn `<observation>...</observation>`.

  Output longer than cfg.max_observation_chars keeps its first max_observation_chars characters,
  preceded by a note saying how long it was and that it was cut.
  """
  limit = cfg.max_observation_chars
  if len(output) > limit:
    output = (
        f"[The output was {len(output):,} characters long; only its first {limit:,} characters "
        f"are shown. Print less, or summarise it.]\n" + output[:limit]
    )
  return f"<observation>{output}</observation>"


# ----------------------------------------------------------------------------- format reward


def _message_format_ok(content: str, *, is_last: bool, cfg: ProtocolConfig) -> bool:
  """One assistant message's format rule (see format_reward)."""
  tag_names = "|".join(re.escape(t) for t in (cfg.think_tag, cfg.execute_tag, cfg.answer_tag))
  tags = [
      _ascii_lower(m.group(0))
      for m in re.finditer(rf"</?(?:{tag_names})>", content, re.IGNORECASE | re.ASCII)
  ]
  # Exactly think-open, think-close, action-open, action-close, in that order. This also rules
  # out action tags inside think and any think tags after it.
  if len(tags) != 4:
    return False
  if tags[0] != f"<{cfg.think_tag}>" or tags[1] != f"</{cfg.think_tag}>":
    return False
  action = tags[2][1:-1]
  if action not in (cfg.execute_tag, cfg.answer_tag) or tags[3] != f"</{action}>":
    return False
  # The answer comes once, in the last message, and the last message must hold it.
  return (action == cfg.answer_tag) == is_last


def format_reward(assistant_messages: Sequence[str], cfg: ProtocolConfig | None = None) -> float:
  """1.0 iff the whole trajectory follows the protocol, else 0.0.

  Every assistant message must be `<think>...</think>` followed by exactly one of
  `<execute>...</execute>` or `<answer_tag>...</answer_tag>` (tags counted case-insensitively in
  ASCII; free text around the blocks is allowed); no action tag inside think; only the last message
  may hold the answer block, and the last message must hold one. An empty trajectory scores 0.0.
  """
  cfg = cfg or DEFAULT_CONFIG
  if not assistant_messages:
    return 0.0
  last = len(assistant_messages) - 1
  ok = all(
      _message_format_ok(message, is_last=(i == last), cfg=cfg)
      for i, message in enumerate(assistant_messages)
  )
  return 1.0 if ok else 0.0


# ----------------------------------------------------------------------------- system prompt


def _field(item: Any, name: str, default: Any = None) -> Any:
  if isinstance(item, Mapping):
    return item.get(name, default)
  return getattr(item, name, default)


def _format_parameters(parameters: Any) -> list[str]:
  """Parameter lines for one tool: accepts a JSON-schema dict, a list of dicts, or None."""
  if not parameters:
    return []
  if isinstance(parameters, Mapping) and "properties" in parameters:
    required = set(parameters.get("required", ()))
    items = [dict(name=k, required=k in required, **v) for k, v in parameters["properties"].items()]
  elif isinstance(parameters, Mapping):
    items = [
        dict(name=k, **(v if isinstance(v, Mapping) else {"description": str(v)}))
        for k, v in parameters.items()
    ]
  else:
    items = [p if isinstance(p, Mapping) else {"name": str(p)} for p in parameters]
  lines = []
  for p in items:
    kind = f" ({p['type']})" if p.get("type") else ""
    need = "" if p.get("required", True) else ", optional"
    if p.get("default") is not None:
      need += f", default {p['default']!r}"
    desc = f": {p['description']}" if p.get("description") else ""
    lines.append(f"    - {p.get('name', '?')}{kind}{need}{desc}")
  return lines


def _format_tools(tools: Sequence[Any]) -> str:
  blocks = []
  for tool in tools:
    name = _field(tool, "name")
    if not name:
      raise ValueError(f"system_prompt: every tool needs a 'name'; found {tool!r}")
    module = _field(tool, "module")
    head = f"- {name}" + (f" (from {module} import {name})" if module else "")
    lines = [head, f"  {_field(tool, 'description', '') or 'No description.'}"]
    parameters = _field(tool, "parameters")
    if parameters is None:  # Biomni's own tool descriptions split parameters in two lists
      parameters = [
          {**p, "required": True} for p in _field(tool, "required_parameters", None) or ()
      ]
      parameters += [
          {**p, "required": False} for p in _field(tool, "optional_parameters", None) or ()
      ]
    params = _format_parameters(parameters)
    if params:
      lines.append("  Parameters:")
      lines.extend(params)
    blocks.append("\n".join(lines))
  return "\n".join(blocks) if blocks else "(no tool functions in this environment)"


def _format_named(items: Sequence[tuple[str, str]], empty: str) -> str:
  return "\n".join(f"- {name}: {desc}" for name, desc in items) if items else empty


def system_prompt(
    tools: Sequence[Any] = (),
    data_lake: Sequence[tuple[str, str]] = (),
    libraries: Sequence[tuple[str, str]] = (),
    cfg: ProtocolConfig = DEFAULT_CONFIG,
) -> str:
  """The system prompt: role, plan checklist, the reply rules, and the environment's resources.

  tools: items with name, description, parameters (and optionally module), as dicts or objects;
    parameters may be a JSON schema, a list of {name, type, description, required, default}, or
    Biomni's required_parameters / optional_parameters lists.
  data_lake / libraries: (name, description) pairs.
  """
  ex, ans, th = cfg.execute_tag, cfg.answer_tag, cfg.think_tag
  return f"""You are a biomedical research assistant. You solve the user's task by reasoning and by running code in an interactive environment that holds tool functions, data files and software libraries.

Start by writing a plan: a numbered checklist of concrete steps, each with an empty box.
1. [ ] First step
2. [ ] Second step
3. [ ] Third step

Work through the plan one step at a time. Show the updated checklist in every reply: mark a finished step [✓], and a step that failed or had to change [✗] with the reason, adding revised steps as needed.
1. [✓] First step (done)
2. [✗] Second step (failed because ...)
3. [ ] Revised second step
4. [ ] Third step

Every reply has the same shape. First reason inside <{th}>...</{th}>, including the updated plan. Then do EXACTLY ONE of:
1) Run code: put it inside <{ex}>...</{ex}> and stop. The output comes back to you as <observation>...</observation>. Python is the default; make the first line #!R to run R, or #!BASH to run a bash script (use bash for command-line programs). Example: <{ex}>print("hello")</{ex}>
2) Answer: when the task is solved, give the final answer inside <{ans}>...</{ans}>, in exactly the format the task asks for. Example: <{ans}>A</{ans}>

Never put both <{ex}> and <{ans}> in one reply, never write a reply without one of them, and never put them inside <{th}>. Always close the block you open.

The interpreter keeps its variables between your code blocks, so split the work into small steps. Print what you need to see, including the results of tool functions (assign them, then print them); only printed output reaches you, and long output is cut to its first {cfg.max_observation_chars:,} characters. Keep code simple. Never invent or simulate data or results: stay rigorous. Stop once the task is solved.

Environment resources

Tool functions callable from your code:
{_format_tools(tools)}

Data files:
{_format_named(data_lake, "(no data files in this environment)")}

Software libraries (import them before use):
{_format_named(libraries, "(only the Python standard library)")}
"""
