"""One multi-turn episode at the token level, as an asyncio coroutine (token-in, token-out).

The protocol's rules are env.episode.ProtocolMachine's (the text-level driver run_episode applies the
same machine); this driver feeds it replies sampled by the engine and keeps the token ids:

    ids = chat prompt ids (system + task + `<|im_start|>assistant\\n`)      mask 0, version -1
    per turn (at most max_turns):
      - if the context fed to the engine would exceed max_context_tokens: end ("context_limit")
      - submit only the ids the engine session has not seen; append the sampled reply
        (mask 1, the engine's log-probs and per-token weight versions)
      - close the reply: `<|im_end|>` (mask 0 unless the model sampled it, then it is part of the
        reply) and `\\n`
      - the machine parses the reply text (env.protocol.parse_reply):
          solution -> end ("solution");
          parse error -> user turn with the repair message; the second parse error ends ("parse_errors");
          execute -> the code runs in the episode's sandbox session while the engine serves others;
                     its output comes back as the user turn `<observation>...</observation>`;
                     on the last allowed turn the episode ends ("max_turns") without running it
      - the next turn starts with `<|im_start|>assistant\\n`
    an engine error ends the episode ("error"), recorded with the exception text.
Turns are submitted with priority group_id: when turns wait for an engine slot, older groups go first, so a
group's stragglers finish before their oldest tokens fall out of the staleness window (a restart wastes the
whole episode) and the group, which the trainer waits for as a whole, is delivered sooner.

The ids equal `ChatRenderer.render(messages).ids` of the final conversation (assistant messages carry
their sampled `token_ids`), followed by `<|im_start|>assistant\n` when the episode ended waiting for a
reply (the engine failed or had no room left, or the prompt alone was over the context cap); the
masks differ from render's only on `<|im_end|>` tokens the model did not sample (render marks them 1;
here they are 0 because no sampler log-prob exists for them). A reply of no text (only `<|im_end|>`, or
ids that decode to nothing) is kept as an assistant message with empty content and its token_ids,
which render lays out like any other.

reward = correctness (family.reward on the answer; 0 without one) + format (protocol.format_reward).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Callable, Optional

import numpy as np

from biomni_jax.data.chat import ChatRenderer
from biomni_jax.env import protocol
from biomni_jax.env.environment import FamilyEnvironment, score_episode
from biomni_jax.env.episode import ProtocolMachine
from biomni_jax.env.tasks import TaskInstance
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.tool_runner import ToolRunner
from biomni_jax.rollout.types import TokenTrajectory
from biomni_jax.sampling.params import SamplingParams

log = logging.getLogger(__name__)


class EpisodeAborted(Exception):
  """Raised inside an episode whose tokens became too stale to ever be returned (the pool restarts it).

  oldest_version: the oldest weight version among the episode's sampled tokens.
  """

  def __init__(self, oldest_version: int, message: str):
    super().__init__(message)
    self.oldest_version = oldest_version


def request_seed(*parts: Any) -> int:
  """A 32-bit sampling seed from the sha256 of the parts (stable across runs)."""
  digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
  return int.from_bytes(digest[:4], "big")


class _TokenLog:
  """The growing per-token arrays of one episode (Python lists until the end)."""

  def __init__(self):
    self.ids: list[int] = []
    self.mask: list[int] = []
    self.logprobs: list[float] = []
    self.versions: list[int] = []

  def add_env(self, ids) -> None:
    ids = [int(t) for t in ids]
    self.ids += ids
    self.mask += [0] * len(ids)
    self.logprobs += [0.0] * len(ids)
    self.versions += [-1] * len(ids)

  def add_sampled(self, ids, logprobs, versions) -> None:
    self.ids += [int(t) for t in ids]
    self.mask += [1] * len(ids)
    self.logprobs += [float(x) for x in logprobs]
    self.versions += [int(v) for v in versions]

  def min_version(self) -> Optional[int]:
    sampled = [v for v, m in zip(self.versions, self.mask) if m]
    return min(sampled) if sampled else None


def _completion_versions(completion) -> tuple[int, ...]:
  n = len(completion.token_ids)
  if len(completion.token_versions) == n:
    return tuple(completion.token_versions)
  version = -1 if completion.policy_version is None else completion.policy_version
  return (version,) * n


async def run_token_episode(
    engine: Any,
    tool_runner: ToolRunner,
    renderer: ChatRenderer,
    env: FamilyEnvironment,
    instance: TaskInstance,
    cfg: RolloutConfig,
    *,
    group_id: int = 0,
    sample_index: int = 0,
    attempt: int = 0,
    should_abort: Optional[Callable[[int], bool]] = None,
) -> TokenTrajectory:
  """Run one episode to its end and score it (see the module docstring).

  engine: has open_session(), close_session(s) and `async generate(session, new_ids, params) ->
    Completion` (biomni_jax.sampling.AsyncEngine).
  tool_runner: the episode's sandbox access; not closed here (the caller owns it).
  should_abort: called with the oldest weight version among the sampled tokens before every turn;
    True raises EpisodeAborted (the engine session is closed first).
  """
  pcfg = protocol.ProtocolConfig(
      answer_tag=cfg.answer_tag, max_observation_chars=cfg.max_observation_chars
  )
  messages: list[dict[str, Any]] = []
  if cfg.use_system_prompt:
    messages.append({"role": "system", "content": env.system})
  messages.append({"role": "user", "content": instance.prompt})
  log_ = _TokenLog()
  log_.add_env(renderer.prompt_ids(messages))
  prompt_len = len(log_.ids)
  header = renderer.header("assistant").ids
  stop = tuple(protocol.stop_strings(pcfg))

  engine_len = 0  # ids the engine session already holds
  machine = ProtocolMachine(pcfg, cfg.max_turns, cfg.tool_timeout_s)
  error = None
  tool_seconds = generate_seconds = 0.0
  session = engine.open_session()
  try:
    while machine.awaiting_reply:
      turn = machine.turns + 1
      if turn > 1:
        if len(log_.ids) + len(header) > cfg.max_context_tokens:
          machine.stop("context_limit")
          break
        log_.add_env(header)
      elif len(log_.ids) > cfg.max_context_tokens:
        machine.stop("context_limit")
        break
      oldest = log_.min_version()
      if should_abort is not None and oldest is not None and should_abort(oldest):
        raise EpisodeAborted(
            oldest,
            f"{instance.instance_id} sample {sample_index}: oldest token version {oldest}",
        )
      params = SamplingParams(
          temperature=cfg.temperature,
          top_p=cfg.top_p,
          top_k=cfg.top_k,
          max_new_tokens=cfg.max_new_tokens_per_turn,
          stop=stop,
          stop_token_ids=(renderer.im_end,),
          seed=request_seed(cfg.seed, instance.instance_id, group_id, sample_index, attempt, turn),
          priority=group_id,
      )
      started = time.monotonic()
      try:
        completion = await engine.generate(session, log_.ids[engine_len:], params)
      except Exception as exc:  # noqa: BLE001 - an engine failure ends only this episode
        machine.stop("error")
        error = f"{type(exc).__name__}: {exc}"
        break
      finally:
        generate_seconds += time.monotonic() - started
      if completion.finish_reason == "error":
        machine.stop("error")
        error = f"engine finish_reason 'error' ({completion.stop_reason})"
        break
      if not completion.token_ids:  # the engine's max_len: nothing fits any more
        machine.stop("context_limit")
        break
      sampled = list(completion.token_ids)
      log_.add_sampled(sampled, completion.logprobs, _completion_versions(completion))
      engine_len = len(log_.ids)
      sampled_eos = sampled[-1] == renderer.im_end
      reply_ids = sampled[:-1] if sampled_eos else sampled
      reply = renderer.tokenizer.decode(reply_ids)
      messages.append({"role": "assistant", "content": reply, "token_ids": reply_ids})
      log_.add_env(renderer.turn_suffix(sampled_eos).ids)  # an appended <|im_end|>: mask 0

      step = machine.on_reply(reply)
      user_text = step.user
      if step.code is not None:
        started = time.monotonic()
        result = await tool_runner.run(step.code, cfg.tool_timeout_s)
        tool_seconds += time.monotonic() - started
        user_text = machine.observation(result)
      if user_text is not None:
        messages.append({"role": "user", "content": user_text})
        log_.add_env(renderer.message(messages[-1]).ids)
  finally:
    engine.close_session(session)

  return _scored_trajectory(
      env,
      instance,
      cfg,
      pcfg,
      log_,
      messages,
      machine,
      error,
      prompt_len,
      group_id,
      tool_seconds,
      generate_seconds,
  )


def _scored_trajectory(
    env: FamilyEnvironment,
    instance: TaskInstance,
    cfg: RolloutConfig,
    pcfg: protocol.ProtocolConfig,
    log_: _TokenLog,
    messages: list[dict[str, Any]],
    machine: ProtocolMachine,
    error: Optional[str],
    prompt_len: int,
    group_id: int,
    tool_seconds: float,
    generate_seconds: float,
) -> TokenTrajectory:
  text_messages = [{"role": m["role"], "content": m["content"]} for m in messages]
  correctness = fmt = 0.0
  if machine.termination != "error":
    try:
      rewards, _, _ = score_episode(env.family, instance, machine.episode(text_messages), pcfg)
      correctness, fmt = rewards["correctness"], rewards["format"]
    except Exception:  # noqa: BLE001 - a grader that chokes on a prediction scores it 0
      log.exception("episode: scoring %s raised; correctness 0", instance.instance_id)
      fmt = float(
          protocol.format_reward(
              [m["content"] for m in text_messages if m["role"] == "assistant"], pcfg
          )
      )
  token_ids = np.asarray(log_.ids, np.int32)
  return TokenTrajectory(
      task_name=instance.task_name,
      instance_id=instance.instance_id,
      group_id=group_id,
      token_ids=token_ids,
      loss_mask=np.asarray(log_.mask, np.int32),
      sampler_logprobs=np.asarray(log_.logprobs, np.float32),
      policy_versions=np.asarray(log_.versions, np.int32),
      prompt_len=prompt_len,
      correctness=float(correctness),
      format=float(fmt),
      reward=float(correctness + fmt),
      num_turns=machine.turns,
      termination=machine.termination,
      tool_seconds=tool_seconds,
      generate_seconds=generate_seconds,
      messages=messages,
      overlong_and_malformed=bool(len(token_ids) > cfg.overlong_threshold and fmt == 0.0),
      error=error,
  )
