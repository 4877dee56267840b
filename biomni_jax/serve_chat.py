"""The engine side of the chat-completions server: validated requests in, OpenAI responses out.

`ChatService.prepare` renders the messages with `data/chat.py` (Qwen3's format) and makes one
`SamplingParams` per choice (choice i of a request with a `seed` samples with seed + i); `complete` awaits
the engine's futures, `stream` polls the sessions' token histories and sends the text as server-sent
events. `engine` is an `Engine` or an `EngineGroup` (data replicas): both run in their own threads, so
nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import AsyncIterator, Optional

from biomni_jax import serve_api as api
from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.tokenizer import IM_END, PAD_TOKEN
from biomni_jax.sampling import Completion, SamplingParams
from biomni_jax.serve_api import RequestError

STREAM_POLL_S = 0.01


def visible_text(text: str, stops: tuple, include_stop: bool) -> tuple[str, Optional[str]]:
  """`text` cut before (or, with include_stop, after) the earliest stop string in it; (text, that stop)."""
  hits = [(text.find(s), s) for s in stops if s in text]
  if not hits:
    return text, None
  index, stop = min(hits)
  return text[: index + len(stop) if include_stop else index], stop


class ChatService:
  """Turns validated requests into engine requests (`engine`: an Engine or EngineGroup) and responses."""

  def __init__(self, engine, tokenizer, model_name: str, *, request_timeout_s: float = 600.0):
    self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
    self.renderer = ChatRenderer(tokenizer)
    self.stop_token_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (IM_END, PAD_TOKEN))
    self.request_timeout_s = request_timeout_s
    self.created = int(time.time())

  def model_card(self) -> api.ModelCard:
    return api.ModelCard(
        id=self.model_name, created=self.created, max_model_len=self.engine.max_len
    )

  def prepare(self, request: api.ChatCompletionRequest) -> tuple[list, list[SamplingParams]]:
    """(prompt ids, one SamplingParams per choice); RequestError for a wrong model or a context overflow."""
    if request.model != self.model_name:
      message = (
          f"The model `{request.model}` does not exist. This server serves `{self.model_name}`."
      )
      raise RequestError(message, param="model", code="model_not_found", status=404)
    prompt = [int(t) for t in self.renderer.prompt_ids([m.rendered() for m in request.messages])]
    room = self.engine.max_len - len(prompt)
    wanted = request.completion_limit or room
    if room < 1 or wanted > room:
      raise RequestError(
          f"This model's maximum context length is {self.engine.max_len} tokens. However, you "
          f"requested {len(prompt) + wanted} tokens ({len(prompt)} in the messages, {wanted} in the "
          f"completion). Please reduce the length of the messages or completion.",
          param="messages",
          code="context_length_exceeded",
      )
    # The limit of nucleus sampling as p -> 0 keeps only the most likely token: greedy.
    greedy = request.top_p == 0.0
    base = secrets.randbits(32) if request.seed is None else request.seed
    params = [
        SamplingParams(
            temperature=0.0 if greedy else request.temperature,
            top_p=1.0 if greedy else request.top_p,
            top_k=max(request.top_k, 0),
            max_new_tokens=wanted,
            stop=tuple(request.stop or ()),
            stop_token_ids=self.stop_token_ids,
            seed=(base + i) % 2**32,
        )
        for i in range(request.n)
    ]
    return prompt, params

  def _submit(self, prompt: list, params: SamplingParams):
    """(session, future of its Completion); the session closes when the turn ends."""
    session = self.engine.open_session()
    future = self.engine.submit(session, prompt, params)
    future.add_done_callback(lambda _: self.engine.close_session(session))
    return session, future

  async def _result(self, future, timeout_s: float) -> Completion:
    """Awaits one engine request; cancelling the caller cancels it (the engine then skips it)."""
    try:
      completion = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except TimeoutError:
      message, code = f"The engine did not finish within {self.request_timeout_s} s.", "timeout"
      raise RequestError(message, status=500, type="server_error", code=code) from None
    except Exception as e:  # noqa: BLE001 - an engine failure is the server's error, not the client's
      raise RequestError(f"The engine failed: {e}", status=500, type="server_error") from None
    if completion.finish_reason not in ("stop", "length"):
      message = f"The engine ended the request with {completion.finish_reason!r}."
      raise RequestError(message, status=500, type="server_error")
    return completion

  def _text(self, token_ids, request: api.ChatCompletionRequest) -> tuple[str, Optional[str]]:
    ids = list(token_ids)
    if ids and ids[-1] in self.stop_token_ids:
      ids = ids[:-1]
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    return visible_text(text, tuple(request.stop or ()), request.include_stop_str_in_output)

  @staticmethod
  def _usage(prompt: list, completions: list[Completion]) -> api.Usage:
    sampled = sum(len(c.token_ids) for c in completions)
    return api.Usage(
        prompt_tokens=len(prompt), completion_tokens=sampled, total_tokens=len(prompt) + sampled
    )

  async def complete(
      self, request, prompt: list, params: list[SamplingParams]
  ) -> api.ChatCompletion:
    futures = [self._submit(prompt, p)[1] for p in params]
    completions = await asyncio.gather(*(self._result(f, self.request_timeout_s) for f in futures))
    choices = [
        api.Choice(
            index=i,
            message=api.AssistantMessage(content=self._text(c.token_ids, request)[0]),
            finish_reason=c.finish_reason,
        )
        for i, c in enumerate(completions)
    ]
    return api.ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=self.model_name,
        choices=choices,
        usage=self._usage(prompt, completions),
    )

  async def stream(self, request, prompt: list, params: list[SamplingParams]) -> AsyncIterator[str]:
    """Server-sent events: chat.completion.chunk objects, each choice's text as the engine samples it.

    Text that might still become a stop string (the last max_stop_len - 1 characters) or that ends in an
    incomplete UTF-8 character is held back until more tokens arrive, so each choice's pieces add up to
    its text in `complete`. A choice's finish chunk follows as soon as its request ends.
    """
    runs = [self._submit(prompt, p) for p in params]
    envelope = dict(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=self.model_name
    )
    event = lambda *choices, usage=None: (  # noqa: E731
        f"data: {api.ChatCompletionChunk(**envelope, choices=choices, usage=usage).model_dump_json()}\n\n"
    )
    hold = max((len(s) for s in request.stop or ()), default=1) - 1
    sent, completions = [0] * len(runs), [None] * len(runs)
    deadline = time.monotonic() + self.request_timeout_s
    try:
      yield event(
          *(
              api.ChunkChoice(index=i, delta=api.Delta(role="assistant", content=""))
              for i in range(len(runs))
          )
      )
      while None in completions:
        for i, (session, future) in enumerate(runs):
          if completions[i] is not None:
            continue
          left = deadline - time.monotonic()
          if future.done() or left <= 0:  # raises the engine's error or the timeout
            completions[i] = await self._result(future, max(left, 0))
            text, _ = self._text(completions[i].token_ids, request)
            safe = len(text)
          else:  # the engine thread appends to the history; a slice is an atomic copy
            text, stop = self._text(session.history[len(prompt) :], request)
            safe = len(text) if stop is not None else len(text) - hold
            while safe > sent[i] and text[safe - 1] == "\ufffd":
              safe -= 1
          if safe > sent[i]:
            yield event(api.ChunkChoice(index=i, delta=api.Delta(content=text[sent[i] : safe])))
            sent[i] = safe
          if completions[i] is not None:
            yield event(
                api.ChunkChoice(
                    index=i, delta=api.Delta(), finish_reason=completions[i].finish_reason
                )
            )
        await asyncio.sleep(STREAM_POLL_S)
      if request.include_usage:
        yield event(usage=self._usage(prompt, completions))
    except RequestError as e:  # the status line has gone: the error travels as an event
      yield f"data: {e.response().model_dump_json()}\n\n"
    finally:  # a client that went away: the engine skips its requests that are still waiting
      for _, future in runs:
        future.cancel()
    yield "data: [DONE]\n\n"
