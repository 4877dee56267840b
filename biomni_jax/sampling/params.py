"""What a request asks for (`SamplingParams`) and what it gets back (`Completion`)."""

from __future__ import annotations

import dataclasses
from typing import Optional

FINISH_REASONS = ("stop", "length", "error")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to sample one turn.

  temperature 0 means greedy (argmax); its log-probs are then log_softmax(logits) (temperature 1).
  top_k <= 0 and top_p >= 1 disable truncation. Generation ends at `max_new_tokens`, at a token in
  `stop_token_ids` (kept in the output), or when the decoded text of this turn contains a stop string
  (the token that completes it is kept; nothing is cut, so the trainer sees exactly the sampled ids).
  `seed` fixes the request's random stream: token i uses fold_in(key(seed), i) whatever shares the batch.
  `priority`: requests waiting for a cache slot get one lowest priority first (arrival order among equals);
  it changes when a turn runs, never what it samples.
  """

  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 256
  stop: tuple[str, ...] = ()
  stop_token_ids: tuple[int, ...] = ()
  seed: int = 0
  priority: int = 0

  def __post_init__(self):
    object.__setattr__(self, "stop", tuple(self.stop))
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
    if self.temperature < 0:
      raise ValueError(f"SamplingParams.temperature must be >= 0, found {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingParams.top_p must be in (0, 1], found {self.top_p}")
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, found {self.max_new_tokens}")
    if any(not isinstance(s, str) or not s for s in self.stop):
      raise ValueError(f"SamplingParams.stop must hold non-empty strings, found {self.stop!r}")
    if not 0 <= self.seed < 2**32:
      raise ValueError(f"SamplingParams.seed must be in [0, 2**32), found {self.seed}")


@dataclasses.dataclass(frozen=True)
class Completion:
  """One turn's sampled tokens.

  token_ids / logprobs / token_versions: one entry per sampled token; logprobs are
  log_softmax(logits / temperature) at the token (before top-p/top-k truncation), float32 values.
  policy_version: the oldest params version that produced a token of this turn (the version the
  session's KV of earlier turns was computed with is not tracked; see `Engine.update_params`).
  finish_reason: 'stop' | 'length' | 'error'; stop_reason says which limit or stop fired:
  'stop_string', 'stop_token', 'max_new_tokens', 'max_len' (session reached the engine's max_len; also
  when the prompt alone does not fit, then with no tokens).
  """

  token_ids: tuple[int, ...]
  logprobs: tuple[float, ...]
  finish_reason: str
  policy_version: Optional[int]
  token_versions: tuple[int, ...] = ()
  stop_reason: Optional[str] = None
  matched_stop: Optional[str] = None
  prompt_tokens_prefilled: int = 0
