"""Teachers for rejection sampling: `(messages) -> one assistant reply` that ends at a stop string.

A Teacher plays the agent of biomni_jax.env.episode.run_episode. Rejection sampling asks a
TeacherFactory for one teacher per rollout, `factory(instance, sample_index) -> Teacher`, so that
per-rollout state (a scripted expert's random generator) never depends on thread scheduling.

Factories, chosen by config string through `make_teacher_factory(kind, **options)`:
  "scripted"  the environment's embedded ScriptedExpert for the instance's family, with seeded
              stochastic mistakes (mistake_rate), seed = hash(seed, instance_id, sample_index);
  "openai"    one shared OpenAITeacher (an OpenAI-compatible chat-completions endpoint: OpenAI,
              vLLM, SGLang, ...) for every rollout, so its concurrency bound is global.

OpenAI-compatible servers drop the stop string from the returned text; the protocol needs it, so
`restore_stop_string` puts back the closing tag of the action block the reply left open. Servers
that return Qwen3's reasoning in a separate `reasoning_content` field get it re-wrapped as
`<think>...</think>` in front of the content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from biomni_jax.env import protocol
from biomni_jax.env.experts import ScriptedExpert
from biomni_jax.env.tasks import TaskInstance
from biomni_jax.registry import Registry

Message = dict[str, str]
Teacher = Callable[[list[Message]], str]

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
# HTTP statuses worth another attempt: request timeout, conflict, rate limit, server errors.
RETRYABLE_STATUS = frozenset({408, 409, 429})


class TeacherError(RuntimeError):
  """A teacher could not produce a reply. `fatal`: retrying later will not help (bad key, bad model)."""

  def __init__(self, message: str, fatal: bool = False):
    super().__init__(message)
    self.fatal = fatal


class TeacherFactory(Protocol):
  name: str

  def __call__(self, instance: TaskInstance, sample_index: int) -> Teacher:
    ...


# ----------------------------------------------------------------------------- scripted experts


def rollout_seed(seed: int, instance_id: str, sample_index: int) -> int:
  """A 64-bit seed that is a pure function of (seed, instance, sample): stable across runs and threads."""
  digest = hashlib.sha256(f"{seed}:{instance_id}:{sample_index}".encode()).digest()
  return int.from_bytes(digest[:8], "big")


class ScriptedTeacherFactory:
  """One ScriptedExpert per rollout for the instance's family (task_name), mistakes seeded per rollout."""

  def __init__(
      self,
      mistake_rate: float = 0.3,
      seed: int = 0,
      cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
  ):
    if not 0.0 <= float(mistake_rate) <= 1.0:
      raise ValueError(
          f"ScriptedTeacherFactory.mistake_rate: expected a value in [0, 1], found {mistake_rate!r}"
      )
    self.mistake_rate, self.seed, self.cfg = float(mistake_rate), int(seed), cfg
    self.name = f"scripted(mistake_rate={self.mistake_rate:g}, seed={self.seed})"

  def __call__(self, instance: TaskInstance, sample_index: int) -> Teacher:
    seed = rollout_seed(self.seed, instance.instance_id, sample_index)
    return ScriptedExpert(instance.task_name, self.mistake_rate, seed, self.cfg)


# ----------------------------------------------------------------------------- OpenAI-compatible client


@dataclasses.dataclass(frozen=True)
class OpenAITeacherConfig:
  """Settings of an OpenAI-compatible chat-completions teacher.

  model: the served model name (required).
  base_url / api_key: default to $OPENAI_BASE_URL / $OPENAI_API_KEY (servers that ignore the
    key still need a non-empty one, e.g. "EMPTY").
  stop: stop strings; None means the protocol's (`</execute>`, `</solution>`).
  timeout_s: per-request time limit; max_retries: further attempts after a retryable failure
    (timeout, connection error, HTTP 408/409/429/5xx), waiting backoff_s * 2**attempt (capped
    at max_backoff_s, with up to 25% jitter) in between.
  max_concurrency: requests in flight at once across all threads using this teacher.
  extra_body: extra JSON fields for the request (e.g. vLLM's {"top_k": 20}).
  """

  model: str
  base_url: str | None = None
  api_key: str | None = None
  temperature: float = 0.6
  top_p: float = 0.95
  max_tokens: int = 4096
  stop: tuple[str, ...] | None = None
  timeout_s: float = 300.0
  max_retries: int = 4
  backoff_s: float = 1.0
  max_backoff_s: float = 30.0
  max_concurrency: int = 8
  extra_body: Mapping[str, Any] | None = None

  def __post_init__(self):
    def bad(field: str, expected: str):
      raise ValueError(
          f"OpenAITeacherConfig.{field}: expected {expected}, found {getattr(self, field)!r}"
      )

    if not isinstance(self.model, str) or not self.model:
      bad("model", "a non-empty model name")
    if not 0.0 <= self.temperature <= 2.0:
      bad("temperature", "a value in [0, 2]")
    if not 0.0 < self.top_p <= 1.0:
      bad("top_p", "a value in (0, 1]")
    if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
      bad("max_tokens", "an int >= 1")
    if self.stop is not None and (
        isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop)
    ):
      bad("stop", "a sequence of non-empty strings or None")
    if not self.timeout_s > 0:
      bad("timeout_s", "a value > 0")
    if not isinstance(self.max_retries, int) or self.max_retries < 0:
      bad("max_retries", "an int >= 0")
    if self.backoff_s < 0 or self.max_backoff_s < 0:
      bad("backoff_s" if self.backoff_s < 0 else "max_backoff_s", "a value >= 0")
    if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
      bad("max_concurrency", "an int >= 1")

  @classmethod
  def from_options(cls, options: Mapping[str, Any]) -> OpenAITeacherConfig:
    """Build from a plain mapping (e.g. a ConfigDict), naming any unknown field."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
      raise ValueError(
          f"OpenAITeacherConfig: unknown field(s) {unknown}; expected fields from {sorted(known)}"
      )
    options = dict(options)
    if options.get("stop") is not None:
      options["stop"] = tuple(options["stop"])
    return cls(**options)


def restore_stop_string(text: str, stops: Sequence[str], finish_reason: str | None) -> str:
  """Put back the stop string an OpenAI-compatible server removed from a reply.

  Only for finish_reason "stop" and only when the text does not already end with a stop string:
  among the stops of the form `</tag>`, the one whose `<tag>` was opened last and not closed
  afterwards is appended. A reply that ended on its own (end of sequence) opens no such tag and
  is returned unchanged.
  """
  if finish_reason != "stop" or any(text.rstrip().endswith(s) for s in stops):
    return text
  lower = text.lower()
  best, best_at = None, -1
  for stop in stops:
    if not (stop.startswith("</") and stop.endswith(">")):
      continue
    opened_at = lower.rfind("<" + stop[2:].lower())
    if opened_at > best_at and lower.find(stop.lower(), opened_at) < 0:
      best, best_at = stop, opened_at
  return text + best if best is not None else text


def _field(obj: Any, name: str) -> Any:
  value = getattr(obj, name, None)
  if value is None:
    extra = getattr(obj, "model_extra", None) or {}
    value = extra.get(name)
  return value


def reply_text(
    response: Any, stops: Sequence[str], cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG
) -> str:
  """The reply of a chat-completions response: separate reasoning re-wrapped, stop string restored."""
  choices = getattr(response, "choices", None)
  if not choices:
    raise TeacherError(
        f"OpenAITeacher: expected a response with at least one choice, found {response!r:.200}"
    )
  choice = choices[0]
  message = choice.message
  content = message.content or ""
  reasoning = _field(message, "reasoning_content") or _field(message, "reasoning")
  think_open = f"<{cfg.think_tag}>"
  if isinstance(reasoning, str) and reasoning.strip() and think_open not in content.lower():
    content = f"{think_open}\n{reasoning.strip()}\n</{cfg.think_tag}>\n{content.lstrip()}"
  return restore_stop_string(content, stops, choice.finish_reason)


class OpenAITeacher:
  """Teacher behind an OpenAI-compatible `/chat/completions` endpoint. Thread-safe.

  Each call sends the whole conversation and returns one reply. Failures worth retrying are
  retried with exponential backoff; what is left raises TeacherError naming the endpoint, the
  model and the last error (`fatal` for 4xx errors other than 408/409/429). `stats` counts
  requests, retries and failures.
  """

  def __init__(
      self,
      config: OpenAITeacherConfig,
      cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
      sleep: Callable[[float], None] = time.sleep,
  ):
    import openai  # the dependency is needed only for this teacher

    self._openai = openai
    self.config, self.cfg, self._sleep = config, cfg, sleep
    self.base_url = config.base_url or os.environ.get(BASE_URL_ENV) or None
    api_key = config.api_key or os.environ.get(API_KEY_ENV)
    if not api_key:
      raise TeacherError(
          f"OpenAITeacher: no API key: set OpenAITeacherConfig.api_key or ${API_KEY_ENV} "
          "(servers that ignore keys accept any non-empty value, e.g. 'EMPTY')",
          fatal=True,
      )
    self.stops = list(config.stop) if config.stop is not None else protocol.stop_strings(cfg)
    # Retries are done here, not by the client, so that every attempt is bounded and counted.
    self._client = openai.OpenAI(
        base_url=self.base_url, api_key=api_key, timeout=config.timeout_s, max_retries=0
    )
    self.endpoint = str(self._client.base_url)
    self.name = f"openai({config.model} @ {self.endpoint})"
    self._slots = threading.BoundedSemaphore(config.max_concurrency)
    self._stats_lock = threading.Lock()
    self.stats = {"requests": 0, "retries": 0, "failures": 0}

  def _count(self, key: str) -> None:
    with self._stats_lock:
      self.stats[key] += 1

  def _retryable(self, error: Exception) -> bool:
    o = self._openai
    if isinstance(error, (o.APITimeoutError, o.APIConnectionError)):
      return True
    if isinstance(error, o.APIStatusError):
      return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False

  def _describe(self, error: Exception) -> str:
    if isinstance(error, self._openai.APITimeoutError):
      return f"timed out after {self.config.timeout_s:g} s"
    if isinstance(error, self._openai.APIStatusError):
      body = error.response.text if error.response is not None else ""
      return f"HTTP {error.status_code}: {body[:300]}"
    return f"{type(error).__name__}: {error}"

  def backoff(self, attempt: int) -> float:
    """Seconds to wait before retry `attempt` (0-based): backoff_s * 2**attempt, capped, + <=25% jitter."""
    wait = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
    return wait * (1.0 + 0.25 * random.random())

  def __call__(self, messages: list[Message]) -> str:
    c = self.config
    request = dict(
        model=c.model,
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        temperature=c.temperature,
        top_p=c.top_p,
        max_tokens=c.max_tokens,
        stop=self.stops,
    )
    if c.extra_body:
      request["extra_body"] = dict(c.extra_body)
    last = None
    for attempt in range(c.max_retries + 1):
      if attempt:
        self._count("retries")
        self._sleep(self.backoff(attempt - 1))
      self._count("requests")
      try:
        with self._slots:
          response = self._client.chat.completions.create(**request)
      except self._openai.OpenAIError as error:
        last = error
        if self._retryable(error):
          continue
        self._count("failures")
        raise TeacherError(
            f"{self.name}: request failed, not retried: {self._describe(error)}", fatal=True
        ) from error
      return reply_text(response, self.stops, self.cfg)
    self._count("failures")
    raise TeacherError(
        f"{self.name}: {c.max_retries + 1} attempt(s) failed; last: {self._describe(last)}"
    ) from last


class OpenAITeacherFactory:
  """Every rollout shares one OpenAITeacher (one client, one concurrency bound)."""

  def __init__(
      self, config: OpenAITeacherConfig, cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG
  ):
    self.teacher = OpenAITeacher(config, cfg)
    self.name = self.teacher.name

  def __call__(self, instance: TaskInstance, sample_index: int) -> Teacher:
    return self.teacher


# ----------------------------------------------------------------------------- registry

# kind (config field `pipeline.teacher.kind`) -> (protocol config, **options) -> TeacherFactory
TEACHERS: Registry[Callable[..., TeacherFactory]] = Registry("teacher kind")


@TEACHERS.register("scripted")
def _scripted(cfg: protocol.ProtocolConfig, **options) -> ScriptedTeacherFactory:
  allowed = {"mistake_rate", "seed"}
  unknown = sorted(set(options) - allowed)
  if unknown:
    raise ValueError(
        f"teacher 'scripted': unknown option(s) {unknown}; expected from {sorted(allowed)}"
    )
  return ScriptedTeacherFactory(cfg=cfg, **options)


@TEACHERS.register("openai")
def _openai(cfg: protocol.ProtocolConfig, **options) -> OpenAITeacherFactory:
  return OpenAITeacherFactory(OpenAITeacherConfig.from_options(options), cfg)


def make_teacher_factory(
    kind: str, cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG, **options
) -> TeacherFactory:
  """The teacher factory registered as `kind` ("scripted" or "openai"), built from its options."""
  if kind not in TEACHERS:
    raise KeyError(
        f"make_teacher_factory: expected a teacher kind in {sorted(TEACHERS)}, found {kind!r}"
    )
  return TEACHERS[kind](cfg, **options)
