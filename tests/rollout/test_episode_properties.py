"""Property-based tests of the token episode loop, driven by an engine that returns arbitrary output.

The fake engine keeps the engine's contract (at most max_new_tokens per turn, stops at the stop
token and, when asked, at a stop string; one log-prob and version per token) but samples anything:
token ids that do not decode (invalid UTF-8, ids past the tokenizer's vocabulary), arbitrary text
with unbalanced, nested and split tags, huge replies, empty replies, engine errors. Properties:
no exception escapes; the episode ends within its turn cap and every engine call within the
context cap; the loss mask covers exactly the sampled tokens (with their log-probs and versions);
the trajectory is what was fed to and sampled from the engine; the format reward is 0 or 1 and
follows the strict rule; the messages render back to the trajectory's ids.
"""

import asyncio
import concurrent.futures

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from biomni_jax.env.protocol import ProtocolConfig
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.episode import run_token_episode
from biomni_jax.rollout.tool_runner import ToolRunner
from biomni_jax.sampling import Completion
from tests.env.test_protocol_properties import ARBITRARY_TEXT, strict_format
from tests.rollout.conftest import FakeSandbox, toy_env, toy_tasks

EXECUTOR = concurrent.futures.ThreadPoolExecutor(2)
TERMINATIONS = {"solution", "max_turns", "parse_errors", "context_limit", "error"}


class ArbitraryEngine:
  """Plays `script` turn by turn (cycling): ("ids", [...]), ("text", str), ("raise",),
  ("finish_error",) or ("empty",); `eos` appends a sampled <|im_end|> to the turn's ids."""

  def __init__(self, renderer, script, honour_stop_strings):
    self.renderer, self.script, self.honour_stop_strings = renderer, script, honour_stop_strings
    self.history = []
    self.calls = []  # (new ids, context length at the call, returned completion or None)
    self.turn = 0
    self.closed = False

  def open_session(self):
    return 1

  def close_session(self, session):
    self.closed = True

  def _cut(self, ids, params):
    ids = ids[: params.max_new_tokens]
    if self.renderer.im_end in ids:  # stop token: kept, and nothing after it
      ids = ids[: ids.index(self.renderer.im_end) + 1]
    decode = self.renderer.tokenizer.decode
    if self.honour_stop_strings and any(s in decode(ids) for s in params.stop):
      for end in range(1, len(ids) + 1):  # the first token that completes a stop string
        if any(s in decode(ids[:end]) for s in params.stop):
          return ids[:end]
    return ids

  async def generate(self, session, new_ids, params):
    new_ids = [int(t) for t in new_ids]
    self.history += new_ids
    kind, *arg = self.script[self.turn % len(self.script)]
    self.turn += 1
    self.calls.append((new_ids, len(self.history), None))
    if kind == "raise":
      raise RuntimeError("engine fell over")
    if kind == "finish_error":
      return Completion((), (), "error", None, (), "engine error")
    if kind == "empty":
      return Completion((), (), "length", None, (), "max_len")
    ids = list(arg[0]) if kind == "ids" else self.renderer.encode(arg[0])
    if arg[1]:
      ids.append(self.renderer.im_end)
    ids = self._cut(ids, params)
    if not ids:
      return Completion((), (), "length", None, (), "max_len")
    logprobs = tuple(-0.01 * (1 + (i * 7919 + self.turn) % 500) for i in range(len(ids)))
    versions = tuple(self.turn for _ in ids)
    completion = Completion(tuple(ids), logprobs, "stop", self.turn, versions, "stop_token")
    self.history += ids
    self.calls[-1] = (new_ids, self.calls[-1][1], completion)
    return completion


def turn_strategy(vocab_size, answer_tag):
  # Ids up to 64 past the tokenizer's vocabulary (a model's padded vocabulary); the low ids are
  # single bytes, so runs of them are often invalid UTF-8.
  token_id = st.one_of(st.integers(0, 300), st.integers(0, vocab_size + 63))
  well_formed = st.sampled_from([t.replace("solution", answer_tag) for t in WELL_FORMED])
  return st.one_of(
      st.tuples(st.just("ids"), st.lists(token_id, max_size=120), st.booleans()),
      st.tuples(st.just("text"), ARBITRARY_TEXT, st.booleans()),
      st.tuples(st.just("text"), well_formed, st.booleans()),
      st.tuples(st.just("text"), well_formed, st.booleans()),
      st.tuples(st.just("text"), st.text(min_size=2000, max_size=4000), st.booleans()),
      st.tuples(st.sampled_from(["raise", "finish_error", "empty"])),
  )


WELL_FORMED = (
    "<think>run</think><execute>print(1)</execute>",
    "<think>done</think><solution>0</solution>",
    "<think>done</think>\n<solution>0</solution>",
    "<think>split</think><exec",  # an action tag split across two turns
    "ute>print(2)</execute>",
    "<think>a <execute>x</execute></think><execute>y</execute>",
    "<think>x</think><execute>a</execute><solution>0</solution>",
)

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run_episode(renderer, engine, cfg):
  async def main():
    runner = ToolRunner(FakeSandbox(), (), EXECUTOR, 5.0)
    try:
      return await run_token_episode(engine, runner, renderer, toy_env(), next(toy_tasks(1)), cfg)
    finally:
      await runner.close()

  return asyncio.run(main())


@PROPERTY_SETTINGS
@given(data=st.data())
def test_token_episode_on_arbitrary_engine_output(renderer, data):
  vocab = len(renderer.tokenizer)
  answer_tag = data.draw(st.sampled_from(["solution", "answer"]), label="answer_tag")
  script = data.draw(
      st.lists(turn_strategy(vocab, answer_tag), min_size=1, max_size=6), label="script"
  )
  prompt_len = len(
      renderer.prompt_ids(
          [{"role": "system", "content": toy_env().system}, {"role": "user", "content": "Say 0."}]
      )
  )
  cfg = RolloutConfig(
      group_size=1,
      groups_per_batch=1,
      max_turns=data.draw(st.integers(1, 6), label="max_turns"),
      max_context_tokens=prompt_len + data.draw(st.integers(-2, 600), label="context room"),
      max_new_tokens_per_turn=data.draw(
          st.one_of(st.integers(1, 200), st.just(4000)), label="max_new_tokens"
      ),
      answer_tag=answer_tag,
      max_observation_chars=200,
      tool_timeout_s=5.0,
  )
  engine = ArbitraryEngine(renderer, script, data.draw(st.booleans(), label="stop strings"))

  t = run_episode(renderer, engine, cfg)  # no exception escapes

  assert engine.closed
  event(f"termination {t.termination}")
  assert t.termination in TERMINATIONS
  assert 0 <= t.num_turns <= cfg.max_turns
  assert len(engine.calls) <= cfg.max_turns
  for _, context, _ in engine.calls:
    assert context <= cfg.max_context_tokens
  n = len(t.token_ids)
  assert len(t.loss_mask) == len(t.sampler_logprobs) == len(t.policy_versions) == n
  assert t.prompt_len == prompt_len

  # The trajectory is exactly what was fed to the engine and sampled from it, in order.
  fed_and_sampled, sampled, logprobs, versions = [], [], [], []
  for new_ids, _, completion in engine.calls:
    fed_and_sampled += new_ids
    if completion is not None:
      fed_and_sampled += completion.token_ids
      sampled += completion.token_ids
      logprobs += completion.logprobs
      versions += completion.token_versions
      assert len(completion.token_ids) <= cfg.max_new_tokens_per_turn
  assert t.token_ids[: len(fed_and_sampled)].tolist() == fed_and_sampled
  # The loss mask covers exactly the sampled tokens, with the engine's log-probs and versions.
  on = t.loss_mask == 1
  assert set(np.unique(t.loss_mask)) <= {0, 1}
  assert t.token_ids[on].tolist() == sampled
  np.testing.assert_array_equal(t.sampler_logprobs[on], np.asarray(logprobs, np.float32))
  assert t.policy_versions[on].tolist() == versions
  assert (t.sampler_logprobs[~on] == 0).all() and (t.policy_versions[~on] == -1).all()
  assert not on[len(fed_and_sampled) :].any()  # after the last reply: environment tokens only
  replies = sum(c is not None for _, _, c in engine.calls)
  assert t.num_turns == replies

  # Rewards: format follows the strict rule on the replies' text; correctness in [0, 1].
  assistant = [m["content"] for m in t.messages if m["role"] == "assistant"]
  assert len(assistant) == replies
  assert t.format in (0.0, 1.0) and 0.0 <= t.correctness <= 1.0
  assert t.reward == t.correctness + t.format
  if t.termination != "error":
    assert t.format == strict_format(assistant, ProtocolConfig(answer_tag=cfg.answer_tag))
  else:
    assert t.reward == 0.0 and t.error

  # The messages lay out to the trajectory's ids in the chat format (the loop's token-in/token-out
  # promise), followed by the assistant header when the episode ended waiting for a reply.
  awaiting_reply = not engine.calls or engine.calls[-1][2] is None
  want = chat_format_ids(renderer, t.messages, awaiting_reply)
  assert t.token_ids.tolist() == want
  # ChatRenderer.render agrees, except that it refuses a message with empty text: a reply of only
  # <|im_end|>, or of ids past the vocabulary, is one (consumers drop such episodes).
  if all(m["content"] for m in t.messages):
    rendered = renderer.render(t.messages, add_generation_prompt=awaiting_reply).ids
    assert rendered.tolist() == want


def chat_format_ids(renderer, messages, awaiting_reply):
  """`<|im_start|>role\\n` + body + `<|im_end|>\\n` per message (an assistant body is its sampled
  ids), then `<|im_start|>assistant\\n` if a reply was awaited."""
  ids = []
  for m in messages:
    body = m["token_ids"] if m.get("token_ids") is not None else renderer.encode(m["content"])
    ids += renderer.header(m["role"]).ids.tolist() + [int(x) for x in body]
    ids += [renderer.im_end] + list(renderer.newline)
  if awaiting_reply:
    ids += renderer.header("assistant").ids.tolist()
  return ids
