"""Stop strings that may straddle token boundaries.

The engine feeds each sampled token to a `StopMatcher`; it decodes only a tail window of the turn's
tokens, wide enough that any occurrence of a stop string ending in the newest token lies inside it:
every token decodes to at least one byte and a stop string of b UTF-8 bytes spans at most b tokens, so
the last b + 3 tokens suffice (3 more tokens cover a multi-byte character cut at the window's left edge,
which decodes to U+FFFD and cannot create a false match of a valid string).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

Detokenize = Callable[[Sequence[int]], str]


class StopMatcher:
  """Tracks one turn's tokens and reports the first stop string its decoded text contains."""

  def __init__(self, stops: Sequence[str], detokenize: Optional[Detokenize]):
    self.stops = tuple(stops)
    if self.stops and detokenize is None:
      raise ValueError(
          f"stop strings {self.stops!r} need a detokenize function; the engine was built "
          "without one (Engine(..., detokenize=tokenizer.decode))"
      )
    self._detokenize = detokenize
    self._window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 3
    self._tokens: list[int] = []

  def push(self, token: int) -> Optional[str]:
    """Adds a token; returns a stop string the decoded text now contains, or None."""
    self._tokens.append(int(token))
    if not self.stops:
      return None
    # Generation ends at the first match, so any match inside the window is new: one that ended in an
    # earlier token lay inside that token's window and would have stopped generation there.
    text = self._detokenize(self._tokens[-self._window :])
    for stop in self.stops:
      if stop in text:
        return stop
    return None
