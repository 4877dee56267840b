"""The agents the harness evaluates: a trained model (weights + tokenizer, run by the engine) or a scripted oracle.

ModelAgent: what the engine needs to play episodes (model config, params, tokenizer), loaded from
  - a biomni_jax run's workdir (SFT or RL: config.json + checkpoints/<step>/state, newest step), or
  - a Hugging Face Qwen3 directory (config.json + safetensors + tokenizer files).
The model's episodes run through the rollout pool (harness.run_model): token-level, many at once.

OracleAgent: a text-level agent that knows the answer and follows the protocol: one look at the sandbox
(`<execute>`), then `<think>...</think><solution>ANSWER</solution>` with the answer written the way the task's
prompt asks (eval1.format_answer for Eval1 tasks). With correct graders and plumbing it scores 1.0 on every
task: the harness's own check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

from biomni_jax.env import eval1
from biomni_jax.env.tasks import TaskInstance


class AgentLoadError(ValueError):
  """A checkpoint or model directory that cannot be loaded; the message says what was expected."""


@dataclasses.dataclass
class ModelAgent:
  """model_config: biomni_jax ModelConfig; params: its pytree; tokenizer: a transformers fast tokenizer."""

  model_config: Any
  params: Any
  tokenizer: Any
  source: str


def _newest_step(checkpoints: str) -> int:
  steps = (
      [int(p) for p in os.listdir(checkpoints) if p.isdigit()] if os.path.isdir(checkpoints) else []
  )
  if not steps:
    raise AgentLoadError(
        f"--checkpoint: no checkpoint under {checkpoints!r} (expected <step>/state written by "
        f"a finished SFT or RL run); train first or pass the run's workdir"
    )
  return max(steps)


def _run_model_source(workdir: str) -> tuple[dict, str]:
  """(config dict holding `model` and `tokenizer`, tokenizer directory) of an SFT run or of an RL run's origin."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  origin = (config.get("rl") or {}).get("init_from_sft") or ""
  if origin:  # an RL run initialised from an SFT run: the model and tokenizer are the SFT run's
    return _run_model_source(origin)
  tokenizer_dir = (config.get("tokenizer") or {}).get("path") or os.path.join(workdir, "tokenizer")
  return config, tokenizer_dir


def _require_file(directory: str, name: str, flag: str, hint: str) -> None:
  """AgentLoadError "<flag>: '<directory>' has no <name>; <hint>" unless directory/name is a file."""
  if not os.path.isfile(os.path.join(directory, name)):
    raise AgentLoadError(f"{flag}: {directory!r} has no {name}; {hint}")


def load_run_agent(workdir: str, step: int | None = None) -> ModelAgent:
  """The params of a run's checkpoint (newest unless `step`), with its model config and tokenizer."""
  import jax
  import ml_collections
  import numpy as np
  import orbax.checkpoint as ocp

  from biomni_jax.config_utils import model_config
  from biomni_jax.data.tokenizer import load_tokenizer

  if not os.path.isdir(workdir):
    raise AgentLoadError(
        f"--checkpoint: {workdir!r} does not exist; expected the workdir of a biomni_jax SFT or "
        f"RL run (with config.json and checkpoints/)"
    )
  _require_file(
      workdir,
      "config.json",
      "--checkpoint",
      "expected the workdir of a biomni_jax run (for a Hugging Face model directory use --hf)",
  )
  config, tokenizer_dir = _run_model_source(workdir)
  if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
    raise AgentLoadError(
        f"--checkpoint: no tokenizer at {tokenizer_dir!r} (the run's tokenizer/ directory)"
    )
  tokenizer = load_tokenizer(tokenizer_dir)
  has_own = bool((config.get("tokenizer") or {}).get("path"))
  model_cfg = model_config(
      ml_collections.ConfigDict(config), vocab_size=None if has_own else len(tokenizer)
  )
  checkpoints = os.path.join(os.path.abspath(workdir), "checkpoints")  # orbax wants absolute paths
  step = _newest_step(checkpoints) if step is None else step
  # The params restore onto this process's default device: there is no sharding to give.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Sharding info not provided when restoring")
    state = ocp.PyTreeCheckpointer().restore(os.path.join(checkpoints, str(step), "state"))
  params = jax.tree.map(np.asarray, state["params"])
  return ModelAgent(model_cfg, params, tokenizer, f"{workdir}@{step}")


def load_hf_agent(path: str) -> ModelAgent:
  """A Hugging Face Qwen3 directory (config.json, *.safetensors, tokenizer files)."""
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.model.hf_io import load_hf_checkpoint

  _require_file(
      path,
      "config.json",
      "--hf",
      "expected a Hugging Face Qwen3 directory (config.json, model*.safetensors, tokenizer.json)",
  )
  _require_file(path, "tokenizer.json", "--hf", "copy the model's tokenizer files next to it")
  model_cfg, params = load_hf_checkpoint(path)
  return ModelAgent(model_cfg, params, load_tokenizer(path), path)


def oracle_reply(instance: TaskInstance) -> str:
  """The oracle's final reply: think, then the ground truth written as the task's prompt asks."""
  answer = instance.answer
  if instance.task_name in eval1.TASK_NAMES:
    answer = eval1.format_answer(instance.task_name, answer)
  return (
      f"<think>The observation confirms the environment works; I know the answer to this "
      f"{instance.task_name} task.</think>\n<solution>{answer}</solution>"
  )


class OracleAgent:
  """Text-level agent (messages -> reply) for one instance: first an `<execute>` probe, then the answer.

  probe: run one small piece of code first (exercises the sandbox and the observation path).
  """

  PROBE = "<think>1. [ ] Check the sandbox. 2. [ ] Answer.</think>\n<execute>print('sandbox ok')</execute>"

  def __init__(self, instance: TaskInstance, probe: bool = True):
    self.instance, self.probe = instance, probe

  def __call__(self, messages: list[dict]) -> str:
    replies = sum(m["role"] == "assistant" for m in messages)
    if self.probe and replies == 0:
      return self.PROBE
    return oracle_reply(self.instance)


def oracle_factory(probe: bool = True):
  """instance -> OracleAgent (the harness's text-agent factory signature)."""

  def make(instance: TaskInstance, sample_index: int) -> OracleAgent:
    del sample_index
    return OracleAgent(instance, probe)

  return make
