"""The one Qwen3 chat renderer, shared by training and sampling (token-in, token-out).

Format (Qwen3):

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{task}<|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n
    <|im_start|>user\\n<observation>...</observation><|im_end|>\\n
    <|im_start|>assistant\\n{reply}<|im_end|>\\n

Loss mask: 1 on every token of assistant content and on the assistant's closing `<|im_end|>`;
0 on the `<|im_start|>assistant\\n` header, on the `\\n` after `<|im_end|>`, and on all system and user
turns. Environment observations are user turns (their content is the environment's
`<observation>...</observation>` text), hence masked.

Thinking: an assistant message's content is the model's whole reply verbatim, e.g.
`<think>\\nreasoning\\n</think>\\n<execute>code</execute>`. The reasoning stays in the context of every
later turn (unlike Qwen3's stock template, which strips it from earlier turns), so a multi-turn
trajectory's token sequence only ever grows by appending and the sampler's context is exactly the
training sequence. The generation prompt is `<|im_start|>assistant\\n`; the model writes `<think>`.

Tokenization: each piece (role name, content, "\\n") is tokenized on its own and the pieces are joined
with the special-token ids, because BPE(a + b) may differ from BPE(a) + BPE(b). A message may carry
`token_ids` (the exact sampled ids of that content); they are used verbatim and never re-tokenized.
Content must be non-empty, except in an assistant message with `token_ids` (a sampled reply that
decodes to no text, or of only `<|im_end|>`: token_ids []).

Incremental use by the sampler (ids identical to `render` of the final conversation):

    ids = prompt_ids(messages)                 # ... <|im_start|>assistant\\n
    ids += sampled reply ids                   # mask 1 (the model's tokens)
    ids += observation(text).ids               # <|im_end|>\\n<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n
    ...
    ids += turn_suffix().ids                   # <|im_end|>\\n after the final reply

If the sampler itself emitted `<|im_end|>` (stopped at eos rather than a stop string), pass
`sampled_eos=True` so the closing token is not appended twice. An appended `<|im_end|>` has mask 1
but no sampler log-prob; RL code must score it or mask it.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from biomni_jax.data.tokenizer import IM_END, IM_START

ROLES = ("system", "user", "assistant")


class Segment(NamedTuple):
  """A run of tokens with their loss mask; both int32 [T]."""

  ids: np.ndarray
  loss_mask: np.ndarray


def _segment(ids: Sequence[int], mask_value: int) -> Segment:
  ids = np.asarray(ids, dtype=np.int32).reshape(-1)
  return Segment(ids, np.full(ids.shape, mask_value, dtype=np.int32))


def _concat(segments: Sequence[Segment]) -> Segment:
  if not segments:
    return _segment([], 0)
  return Segment(
      np.concatenate([s.ids for s in segments]), np.concatenate([s.loss_mask for s in segments])
  )


def validate_message(message: Any, where: str) -> None:
  """Raise ValueError naming `where` (e.g. 'messages[3]') and the bad field of a chat message."""
  if not isinstance(message, Mapping):
    raise ValueError(
        f"{where}: expected a mapping with 'role' and 'content', " f"found {type(message).__name__}"
    )
  if "role" not in message:
    raise ValueError(f"{where}.role: missing (expected one of {ROLES})")
  if message["role"] not in ROLES:
    raise ValueError(f"{where}.role: expected one of {ROLES}, found {message['role']!r}")
  if "content" not in message:
    raise ValueError(f"{where}.content: missing")
  content = message["content"]
  if not isinstance(content, str):
    raise ValueError(f"{where}.content: expected a string, found {type(content).__name__}")
  token_ids = message.get("token_ids")
  # A sampled reply may decode to no text (only <|im_end|>, or ids without text); its ids still
  # render it, so an assistant message carrying token_ids may have empty content.
  if not content and not (message["role"] == "assistant" and token_ids is not None):
    raise ValueError(
        f"{where}.content: expected non-empty text (empty only for an assistant reply with "
        f"token_ids), found an empty string"
    )
  if token_ids is not None:
    arr = np.asarray(token_ids)
    ints = arr.size == 0 or np.issubdtype(arr.dtype, np.integer)
    if arr.ndim != 1 or not ints or (arr.size == 0 and content):
      raise ValueError(
          f"{where}.token_ids: expected a 1-D list of ints (empty only with empty content), "
          f"found shape {arr.shape} dtype {arr.dtype}"
      )


class ChatRenderer:
  """Renders Qwen3 chat messages to token ids and loss masks with one tokenizer.

  Holds the ids of the control tokens and of the fixed text pieces, computed once.
  Works with a real Qwen3 tokenizer directory and with the embedded tokenizer.
  """

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.im_start = self._single_token(IM_START)
    self.im_end = self._single_token(IM_END)
    self.newline = tuple(self.encode("\n"))
    self._role_ids = {role: tuple(self.encode(role)) for role in ROLES}

  def _single_token(self, text: str) -> int:
    ids = self.encode(text)
    if len(ids) != 1:
      raise ValueError(
          f"ChatRenderer: expected {text!r} to be a single token of the tokenizer, "
          f"found ids {ids}"
      )
    return ids[0]

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` alone, without BOS/EOS additions."""
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def header(self, role: str) -> Segment:
    """`<|im_start|>{role}\\n`, mask 0."""
    return _segment((self.im_start, *self._role_ids[role], *self.newline), 0)

  def turn_suffix(self, sampled_eos: bool = False) -> Segment:
    """Closes an assistant reply: `<|im_end|>` (mask 1) then `\\n` (mask 0).

    With `sampled_eos` the reply's ids already end in `<|im_end|>`; only `\\n` is returned.
    """
    newline = _segment(self.newline, 0)
    return newline if sampled_eos else _concat([_segment([self.im_end], 1), newline])

  def message(self, message: Mapping[str, Any], where: str = "message") -> Segment:
    """One full turn `<|im_start|>role\\n{content}<|im_end|>\\n` with its loss mask."""
    validate_message(message, where)
    role = message["role"]
    is_assistant = int(role == "assistant")
    if message.get("token_ids") is not None:
      body = list(np.asarray(message["token_ids"]).tolist())
    else:
      body = self.encode(message["content"])
    return _concat(
        [
            self.header(role),
            _segment(body, is_assistant),
            _segment([self.im_end], is_assistant),
            _segment(self.newline, 0),
        ]
    )

  def render(
      self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False
  ) -> Segment:
    """All messages -> (ids int32 [T], loss_mask int32 [T]); optionally + `<|im_start|>assistant\\n`."""
    if not messages:
      raise ValueError("render: expected at least one message, found none")
    parts = [self.message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if add_generation_prompt:
      parts.append(self.header("assistant"))
    return _concat(parts)

  def prompt_ids(self, messages: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Everything up to and including `<|im_start|>assistant\\n`: what the sampler is fed. int32 [T]."""
    return self.render(messages, add_generation_prompt=True).ids

  def observation(self, text: str, sampled_eos: bool = False) -> Segment:
    """Appended after a sampled reply: turn suffix + the user turn `text` + the next assistant header.

    Mask: 1 on the closing `<|im_end|>` of the reply (absent if `sampled_eos`), 0 elsewhere.
    """
    return _concat(
        [
            self.turn_suffix(sampled_eos),
            self.message({"role": "user", "content": text}, "observation"),
            self.header("assistant"),
        ]
    )


def render(messages: Sequence[Mapping[str, Any]], tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Render a conversation: (ids int32 [T], loss_mask int32 [T]). See the module docstring."""
  return tuple(ChatRenderer(tokenizer).render(messages))


def prompt_ids(messages: Sequence[Mapping[str, Any]], tokenizer) -> np.ndarray:
  """Ids of `messages` followed by `<|im_start|>assistant\\n`, int32 [T]."""
  return ChatRenderer(tokenizer).prompt_ids(messages)


def turn_suffix_ids(tokenizer, sampled_eos: bool = False) -> Segment:
  """`<|im_end|>\\n` closing a sampled reply (mask [1, 0]); only `\\n` when `sampled_eos`."""
  return ChatRenderer(tokenizer).turn_suffix(sampled_eos)


def observation_ids(text: str, tokenizer, sampled_eos: bool = False) -> Segment:
  """`<|im_end|>\\n<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n` with its mask."""
  return ChatRenderer(tokenizer).observation(text, sampled_eos)
