"""The chat renderer: exact ids and masks, masked observations, incremental sampling == render."""

import numpy as np
import pytest

from biomni_jax.data.chat import (
    ChatRenderer,
    observation_ids,
    prompt_ids,
    render,
    turn_suffix_ids,
)

SYSTEM = "You are a biomedical agent."
TASK = "Which gene is causal for trait X?"
REPLY_1 = "<think>\nLook it up.\n</think>\n<execute>\nprint(lookup('X'))\n</execute>"
OBSERVATION = "<observation>BRCA1 0.93</observation>"
REPLY_2 = "<think>\nBRCA1 scores highest.\n</think>\n<solution>BRCA1</solution>"

CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": TASK},
    {"role": "assistant", "content": REPLY_1},
    {"role": "user", "content": OBSERVATION},
    {"role": "assistant", "content": REPLY_2},
]


def _enc(tokenizer, text):
  return tokenizer.encode(text, add_special_tokens=False)


def test_hand_written_conversation_renders_to_expected_ids_and_mask(tokenizer):
  start = tokenizer.convert_tokens_to_ids("<|im_start|>")
  end = tokenizer.convert_tokens_to_ids("<|im_end|>")
  nl = _enc(tokenizer, "\n")
  assert len(nl) == 1

  expected_ids, expected_mask = [], []

  def add(ids, mask):
    expected_ids.extend(ids)
    expected_mask.extend([mask] * len(ids))

  for role, content in [(m["role"], m["content"]) for m in CONVERSATION]:
    trained = int(role == "assistant")
    add([start] + _enc(tokenizer, role) + nl, 0)  # header: never trained
    add(_enc(tokenizer, content), trained)  # content
    add([end], trained)  # end of turn: trained for assistant
    add(nl, 0)  # "\n" after <|im_end|>: never trained

  ids, mask = render(CONVERSATION, tokenizer)
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  np.testing.assert_array_equal(ids, expected_ids)
  np.testing.assert_array_equal(mask, expected_mask)
  # Trained tokens are exactly the two replies and their <|im_end|>.
  assert tokenizer.decode(ids[mask == 1]) == REPLY_1 + "<|im_end|>" + REPLY_2 + "<|im_end|>"
  assert int(mask.sum()) == len(_enc(tokenizer, REPLY_1)) + len(_enc(tokenizer, REPLY_2)) + 2


def test_render_matches_the_chat_template_text_and_its_tokenization(tokenizer):
  ids, _ = render(CONVERSATION, tokenizer)
  text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
  assert tokenizer.decode(ids) == text
  # For content not starting with whitespace, piecewise tokenization equals whole-text tokenization.
  assert ids.tolist() == _enc(tokenizer, text)


def test_observation_and_system_and_user_tokens_are_masked(tokenizer):
  ids, mask = render(CONVERSATION, tokenizer)
  obs = _enc(tokenizer, OBSERVATION)
  positions = [i for i in range(len(ids) - len(obs) + 1) if ids[i : i + len(obs)].tolist() == obs]
  assert len(positions) == 1
  assert mask[positions[0] : positions[0] + len(obs)].sum() == 0
  untrained_text = tokenizer.decode(ids[mask == 0])
  for text in (SYSTEM, TASK, OBSERVATION):
    assert text in untrained_text


def test_incremental_sampling_equals_render_of_the_final_conversation(tokenizer):
  renderer = ChatRenderer(tokenizer)
  # What the engine sees: the prompt, then sampled reply ids, then environment tokens.
  ids = list(prompt_ids(CONVERSATION[:2], tokenizer))
  mask = [0] * len(ids)
  sampled_1 = _enc(tokenizer, REPLY_1)
  ids += sampled_1
  mask += [1] * len(sampled_1)
  obs = observation_ids(OBSERVATION, tokenizer)
  ids += obs.ids.tolist()
  mask += obs.loss_mask.tolist()
  # Second reply: the sampler emitted <|im_end|> itself this time.
  sampled_2 = _enc(tokenizer, REPLY_2) + [renderer.im_end]
  ids += sampled_2
  mask += [1] * len(sampled_2)
  suffix = turn_suffix_ids(tokenizer, sampled_eos=True)
  ids += suffix.ids.tolist()
  mask += suffix.loss_mask.tolist()

  expected_ids, expected_mask = render(CONVERSATION, tokenizer)
  assert ids == expected_ids.tolist()
  assert mask == expected_mask.tolist()


def test_observation_piece_spells_qwen3_turn_boundaries(tokenizer):
  obs = observation_ids("<observation>42</observation>", tokenizer)
  assert tokenizer.decode(obs.ids) == (
      "<|im_end|>\n<|im_start|>user\n<observation>42</observation><|im_end|>\n<|im_start|>assistant\n"
  )
  assert obs.loss_mask.tolist() == [1] + [0] * (len(obs.ids) - 1)
  after_eos = observation_ids("<observation>42</observation>", tokenizer, sampled_eos=True)
  np.testing.assert_array_equal(after_eos.ids, obs.ids[1:])
  assert after_eos.loss_mask.sum() == 0
  suffix = turn_suffix_ids(tokenizer)
  assert tokenizer.decode(suffix.ids) == "<|im_end|>\n" and suffix.loss_mask.tolist() == [1, 0]


def test_sampled_token_ids_are_used_verbatim(tokenizer):
  # A non-canonical split of the same text (as a sampler may produce) must survive rendering.
  canonical = _enc(tokenizer, "BRCA1")
  odd_split = [i for ch in "BRCA1" for i in _enc(tokenizer, ch)]
  assert odd_split != canonical
  messages = [
      {"role": "user", "content": "Q"},
      {"role": "assistant", "content": "BRCA1", "token_ids": odd_split},
  ]
  ids, mask = render(messages, tokenizer)
  header = prompt_ids(messages[:1], tokenizer)
  assert ids[len(header) : len(header) + len(odd_split)].tolist() == odd_split
  assert mask.sum() == len(odd_split) + 1


def test_an_assistant_reply_of_no_text_renders_from_its_token_ids(tokenizer):
  renderer = ChatRenderer(tokenizer)
  user = {"role": "user", "content": "Q"}
  header = prompt_ids([user], tokenizer).tolist()
  closing = [renderer.im_end, *renderer.newline]
  # Ids that decode to nothing (past the vocabulary), and a reply of only <|im_end|> (no ids).
  for reply_ids in ([len(tokenizer) + 3, len(tokenizer) + 7], []):
    ids, mask = render(
        [user, {"role": "assistant", "content": "", "token_ids": reply_ids}], tokenizer
    )
    assert ids.tolist() == header + reply_ids + closing
    assert mask.tolist() == [0] * len(header) + [1] * len(reply_ids) + [1, 0]
  # Empty text is refused without ids, from other roles, and ids [] must go with empty text.
  for bad, match in [
      ({"role": "assistant", "content": ""}, r"content: expected non-empty text"),
      ({"role": "user", "content": "", "token_ids": [5]}, r"content: expected non-empty text"),
      ({"role": "assistant", "content": "x", "token_ids": []}, r"token_ids: expected a 1-D list"),
  ]:
    with pytest.raises(ValueError, match=match):
      render([user, bad], tokenizer)


def test_prompt_ends_with_the_assistant_header(tokenizer):
  ids = prompt_ids(CONVERSATION[:2], tokenizer)
  assert tokenizer.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "message, match",
    [
        ({"content": "x"}, r"messages\[1\]\.role: missing"),
        ({"role": "bot", "content": "x"}, r"messages\[1\]\.role: expected one of .* found 'bot'"),
        ({"role": "user"}, r"messages\[1\]\.content: missing"),
        ({"role": "assistant", "content": ""}, r"messages\[1\]\.content: expected non-empty text"),
        (
            {"role": "assistant", "content": 3},
            r"messages\[1\]\.content: expected a string, found int",
        ),
    ],
)
def test_malformed_messages_raise_errors_naming_index_and_field(tokenizer, message, match):
  with pytest.raises(ValueError, match=match):
    render([{"role": "user", "content": "Q"}, message], tokenizer)
