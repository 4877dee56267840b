"""One token-level episode: ids, masks, log-probs, versions, protocol rules, rewards, failures."""

import asyncio
import concurrent.futures

import numpy as np
import pytest

from biomni_jax.env import protocol
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.episode import EpisodeAborted, run_token_episode
from biomni_jax.rollout.tool_runner import RESTARTED_NOTE, ToolRunner
from tests.rollout.conftest import FakeSandbox, ScriptedEngine, scripted, toy_env, toy_tasks

EXECUTOR = concurrent.futures.ThreadPoolExecutor(4)
THREE_TURNS = (
    "<think>look</think><execute>print(1)</execute>",
    "<think>again</think><execute>print(2)</execute>",
    "<think>done</think><solution>0</solution>",
)


def run(engine, renderer, cfg=None, sandbox=None, watchdog_s=5.0, **kwargs):
  cfg = cfg or RolloutConfig(group_size=1, groups_per_batch=1)
  sandbox = sandbox or FakeSandbox()
  instance = next(toy_tasks(1))

  async def main():
    runner = ToolRunner(sandbox, (), EXECUTOR, watchdog_s)
    try:
      return await run_token_episode(engine, runner, renderer, toy_env(), instance, cfg, **kwargs)
    finally:
      await runner.close()

  return asyncio.run(main())


def expected_masks(renderer, messages, sampled_eos):
  """render's mask with 0 on every <|im_end|> closing an assistant reply that was not sampled."""
  ids, mask = renderer.render(messages)
  mask = mask.copy()
  if not sampled_eos:
    mask[(ids == renderer.im_end) & (mask == 1)] = 0
  return ids, mask


@pytest.mark.parametrize("sampled_eos", [False, True])
def test_three_turn_scripted_episode_has_exact_tokens_masks_logprobs_versions(
    renderer, sampled_eos
):
  engine = ScriptedEngine(renderer, scripted(*THREE_TURNS), sampled_eos=sampled_eos, version=7)
  t = run(engine, renderer)

  assert (t.termination, t.num_turns, t.correctness, t.format, t.reward) == (
      "solution",
      3,
      1.0,
      1.0,
      2.0,
  )
  roles = [m["role"] for m in t.messages]
  assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
  assert t.messages[3]["content"] == "<observation>ran: print(1)</observation>"
  assert t.messages[5]["content"] == "<observation>ran: print(2)</observation>"
  # Token-in/token-out: the incremental ids are exactly the renderer's ids of the final conversation.
  ids, mask = expected_masks(renderer, t.messages, sampled_eos)
  np.testing.assert_array_equal(t.token_ids, ids)
  np.testing.assert_array_equal(t.loss_mask, mask)
  assert t.prompt_len == len(renderer.prompt_ids(t.messages[:2]))
  # Sampled runs: each reply's tokens in order, with the fake's log-probs -(i+1)/100 and version 7.
  starts = np.flatnonzero(np.diff(np.concatenate([[0], t.loss_mask])) == 1)
  ends = np.flatnonzero(np.diff(np.concatenate([t.loss_mask, [0]])) == -1) + 1
  assert len(starts) == 3
  for k, (a, b) in enumerate(zip(starts, ends)):
    reply = renderer.encode(THREE_TURNS[k]) + ([renderer.im_end] if sampled_eos else [])
    assert t.token_ids[a:b].tolist() == reply
    np.testing.assert_allclose(
        t.sampler_logprobs[a:b], [-(i + 1) / 100 for i in range(b - a)], rtol=1e-6
    )
  assert (t.policy_versions[t.loss_mask == 1] == 7).all()
  assert (t.policy_versions[t.loss_mask == 0] == -1).all()
  assert (t.sampler_logprobs[t.loss_mask == 0] == 0).all()
  assert (t.min_version, t.max_version) == (7, 7)
  # Only new tokens go to the engine: the submitted pieces concatenated are the trajectory minus replies.
  fed = [tok for _, new in engine.submitted for tok in new]
  assert fed == t.token_ids[t.loss_mask == 0].tolist()[: len(fed)]
  assert engine.submitted[0][1] == t.token_ids[: t.prompt_len].tolist()
  assert engine.closed == {1}


def test_versions_change_mid_turn_are_recorded_per_token(renderer):
  engine = ScriptedEngine(renderer, scripted(*THREE_TURNS), delay_s=0.02)

  async def bump():
    while True:
      await asyncio.sleep(0.01)
      engine.version += 1

  async def main():
    from biomni_jax.rollout.tool_runner import ToolRunner

    bumper = asyncio.ensure_future(bump())
    runner = ToolRunner(FakeSandbox(), (), EXECUTOR)
    t = await run_token_episode(
        engine,
        runner,
        renderer,
        toy_env(),
        next(toy_tasks(1)),
        RolloutConfig(group_size=1, groups_per_batch=1),
    )
    bumper.cancel()
    return t

  t = asyncio.run(main())
  sampled = t.policy_versions[t.loss_mask == 1]
  assert (np.diff(sampled) >= 0).all() and sampled[-1] > sampled[0]
  assert t.min_version == sampled[0] and t.max_version == sampled[-1]


def test_second_parse_error_ends_with_repairs_in_context(renderer):
  engine = ScriptedEngine(
      renderer,
      scripted(
          "<think>no tags here</think>",
          "<think>x</think><execute>a</execute><solution>b</solution>",
      ),
  )
  t = run(engine, renderer)
  assert (t.termination, t.num_turns, t.reward) == ("parse_errors", 2, 0.0)
  assert t.messages[3]["content"] == protocol.no_tags_message()
  assert t.messages[5]["content"] == protocol.multiple_tags_message()
  np.testing.assert_array_equal(t.token_ids, renderer.render(t.messages).ids)


def test_one_repair_then_solution(renderer):
  engine = ScriptedEngine(
      renderer, scripted("<think>oops</think>", "<think>ok</think><solution>0</solution>")
  )
  t = run(engine, renderer)
  # Correct answer but a malformed earlier reply: correctness 1, format 0.
  assert (t.termination, t.correctness, t.format, t.reward) == ("solution", 1.0, 0.0, 1.0)


def test_max_turns_and_context_limit(renderer):
  engine = ScriptedEngine(renderer, scripted("<think>t</think><execute>print(1)</execute>"))
  t = run(engine, renderer, RolloutConfig(group_size=1, groups_per_batch=1, max_turns=4))
  assert (t.termination, t.num_turns, t.reward) == ("max_turns", 4, 0.0)
  np.testing.assert_array_equal(t.token_ids, renderer.render(t.messages).ids)

  engine = ScriptedEngine(renderer, scripted("<think>t</think><execute>print(1)</execute>"))
  prompt_len = len(
      renderer.prompt_ids(
          [{"role": "system", "content": toy_env().system}, {"role": "user", "content": "Say 0."}]
      )
  )
  t = run(
      engine,
      renderer,
      RolloutConfig(group_size=1, groups_per_batch=1, max_context_tokens=prompt_len + 40),
  )
  assert t.termination == "context_limit" and 1 <= t.num_turns < 64
  # Every call's prompt stayed within the cap.
  fed = 0
  for _, new in engine.submitted:
    fed += len(new)
    assert fed <= prompt_len + 40
    fed += len(renderer.encode("<think>t</think><execute>print(1)</execute>"))

  t = run(
      ScriptedEngine(renderer, scripted("x")),
      renderer,
      RolloutConfig(group_size=1, groups_per_batch=1, max_context_tokens=prompt_len - 1),
  )
  assert (t.termination, t.num_turns, t.num_sampled_tokens) == ("context_limit", 0, 0)


def test_the_last_turn_code_is_not_run(renderer):
  sandbox = FakeSandbox()
  engine = ScriptedEngine(renderer, scripted("<think>t</think><execute>print(1)</execute>"))
  t = run(engine, renderer, RolloutConfig(group_size=1, groups_per_batch=1, max_turns=2), sandbox)
  assert (t.termination, t.num_turns) == ("max_turns", 2)
  assert sandbox.log == ["print(1)"]  # turn 1's code only: no reply would read turn 2's output
  assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "user", "assistant"]
  # The trajectory ends with the last reply and its `<|im_end|>\n`, no observation.
  ids, mask = expected_masks(renderer, t.messages, sampled_eos=False)
  np.testing.assert_array_equal(t.token_ids, ids)
  np.testing.assert_array_equal(t.loss_mask, mask)


def test_a_reply_of_only_im_end_renders_back_to_the_trajectory(renderer):
  replies = scripted("", "<think>t</think><solution>0</solution>")
  engine = ScriptedEngine(renderer, replies, sampled_eos=True)
  t = run(engine, renderer)
  assert t.messages[2] == {"role": "assistant", "content": "", "token_ids": []}
  assert (t.termination, t.num_turns, t.correctness, t.format) == ("solution", 2, 1.0, 0.0)
  ids, mask = expected_masks(renderer, t.messages, sampled_eos=True)
  np.testing.assert_array_equal(t.token_ids, ids)
  np.testing.assert_array_equal(t.loss_mask, mask)


def test_overlong_and_malformed_flag(renderer):
  engine = ScriptedEngine(renderer, scripted("<think>t</think><execute>print(1)</execute>"))
  t = run(
      engine,
      renderer,
      RolloutConfig(group_size=1, groups_per_batch=1, max_turns=3, overlong_threshold=50),
  )
  assert t.format == 0.0 and t.num_tokens > 50 and t.overlong_and_malformed
  t = run(
      ScriptedEngine(renderer, scripted(*THREE_TURNS)),
      renderer,
      RolloutConfig(group_size=1, groups_per_batch=1, overlong_threshold=50),
  )
  assert t.format == 1.0 and not t.overlong_and_malformed


def test_engine_error_ends_only_the_episode(renderer):
  engine = ScriptedEngine(renderer, scripted(*THREE_TURNS), fail=lambda turn, _: turn == 2)
  t = run(engine, renderer)
  assert (t.termination, t.num_turns, t.reward) == ("error", 1, 0.0)
  assert "scripted engine failure at turn 2" in t.error
  assert engine.closed == {1}


def test_sandbox_crash_and_hang_become_observations(renderer):
  replies = (
      "<think>a</think><execute>crash</execute>",
      "<think>b</think><execute>hang</execute>",
      "<think>c</think><execute>print(3)</execute>",
      "<think>d</think><solution>0</solution>",
  )
  sandbox = FakeSandbox()
  t = run(
      ScriptedEngine(renderer, scripted(*replies)),
      renderer,
      RolloutConfig(group_size=1, groups_per_batch=1, tool_timeout_s=0.2),
      sandbox=sandbox,
      watchdog_s=0.1,
  )
  assert t.termination == "solution" and t.reward == 2.0
  assert "the execution environment failed: SandboxError: worker died" in t.messages[3]["content"]
  assert "exceeded the time limit of 0.2 s" in t.messages[5]["content"]
  assert t.messages[7]["content"] == f"<observation>{RESTARTED_NOTE}ran: print(3)</observation>"
  assert len(sandbox.sessions) == 3 and all(s.closed for s in sandbox.sessions)


def test_should_abort_is_asked_with_the_oldest_version(renderer):
  seen = []

  def abort(oldest):
    seen.append(oldest)
    return len(seen) >= 2

  with pytest.raises(EpisodeAborted):
    run(ScriptedEngine(renderer, scripted(*THREE_TURNS), version=3), renderer, should_abort=abort)
  assert seen == [3, 3]
