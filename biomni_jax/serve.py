"""An OpenAI-compatible chat-completions server over the sampling engine (FastAPI + uvicorn).

    python -m biomni_jax.serve --model=HF_DIR --host=127.0.0.1 --port=8000 [--mesh_tensor=-1 --mesh_data=1]
    python -m biomni_jax.serve --workdir=RUN_DIR [--step=N] --port=8000     # a training run's checkpoint

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health. Any OpenAI client
(Biomni's agent through LangChain's ChatOpenAI, the `openai` package, curl) can use a trained model:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model=NAME, messages=[...], stop=["</execute>", "</solution>"],
                                   temperature=0.6, top_p=0.95, max_tokens=4096, n=8)

Messages are rendered by the project's one chat renderer (`data/chat.py`, Qwen3's format) and generation
stops at `<|im_end|>`. The request parameters and error bodies are `serve_api.py`'s. As in OpenAI's API the
returned text ends before the stop string that ended it and finish_reason is "stop" or "length". Each of
the `n` choices is its own engine request; with a `seed`, choice i samples with seed + i (so choice i of
a request equals choice 0 of the same request with seed + i).

The engine runs on this host's sampler mesh (`--mesh_data` replicas x `--mesh_tensor` devices each, see
`sampling/layout.py`) in its own thread(s), batching the requests of all clients (continuous batching);
the event loop only renders prompts and awaits the engine's futures.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import time
import uuid
from typing import AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.tokenizer import IM_END, PAD_TOKEN
from biomni_jax.sampling import Completion, SamplingParams
from biomni_jax.serve_api import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    RequestError,
    Usage,
    error_from_validation,
)

STREAM_POLL_S = 0.01
# Longer than clients' idle keep-alive (httpx: 5 s), so a client never reuses a connection the server is closing.
KEEP_ALIVE_S = 30


def visible_text(text: str, stops: tuple, include_stop: bool) -> tuple[str, Optional[str]]:
  """`text` cut before (or, with include_stop, after) the earliest stop string in it; (text, that stop)."""
  hits = [(text.find(s), s) for s in stops if s in text]
  if not hits:
    return text, None
  index, stop = min(hits)
  return text[: index + len(stop) if include_stop else index], stop


def _history(session) -> list:
  """The token history of an `Engine` session or of an `EngineGroup` replica's session."""
  return getattr(session, "inner", session).history


class ChatService:
  """Turns validated requests into engine requests (`engine`: an Engine or EngineGroup) and responses."""

  def __init__(self, engine, tokenizer, model_name: str, *, request_timeout_s: float = 600.0):
    self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
    self.renderer = ChatRenderer(tokenizer)
    self.stop_token_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (IM_END, PAD_TOKEN))
    self.request_timeout_s = request_timeout_s
    self.created = int(time.time())

  def model_card(self) -> ModelCard:
    return ModelCard(id=self.model_name, created=self.created, max_model_len=self.engine.max_len)

  def prepare(self, request: ChatCompletionRequest) -> tuple[list, list[SamplingParams]]:
    """(prompt ids, one SamplingParams per choice); RequestError for a wrong model or a context overflow."""
    if request.model != self.model_name:
      raise RequestError(
          f"The model `{request.model}` does not exist. This server serves `{self.model_name}`.",
          param="model",
          code="model_not_found",
          status=404,
      )
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

  async def _result(self, future) -> Completion:
    """Awaits one engine request; cancelling the caller cancels it (the engine then skips it)."""
    try:
      completion = await asyncio.wait_for(asyncio.wrap_future(future), self.request_timeout_s)
    except TimeoutError:
      raise RequestError(
          f"The engine did not finish within {self.request_timeout_s} s.",
          status=500,
          type="server_error",
          code="timeout",
      ) from None
    except Exception as e:  # noqa: BLE001 - an engine failure is the server's error, not the client's
      raise RequestError(f"The engine failed: {e}", status=500, type="server_error") from None
    if completion.finish_reason not in ("stop", "length"):
      raise RequestError(
          f"The engine ended the request with {completion.finish_reason!r}.",
          status=500,
          type="server_error",
      )
    return completion

  def _text(self, token_ids, request: ChatCompletionRequest) -> tuple[str, Optional[str]]:
    ids = list(token_ids)
    if ids and ids[-1] in self.stop_token_ids:
      ids = ids[:-1]
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    return visible_text(text, tuple(request.stop or ()), request.include_stop_str_in_output)

  @staticmethod
  def _usage(prompt: list, completions: list[Completion]) -> Usage:
    sampled = sum(len(c.token_ids) for c in completions)
    return Usage(
        prompt_tokens=len(prompt), completion_tokens=sampled, total_tokens=len(prompt) + sampled
    )

  async def complete(
      self, request: ChatCompletionRequest, prompt: list, params: list[SamplingParams]
  ) -> ChatCompletion:
    futures = [self._submit(prompt, p)[1] for p in params]
    completions = await asyncio.gather(*(self._result(f) for f in futures))
    choices = [
        Choice(
            index=i,
            message=AssistantMessage(content=self._text(c.token_ids, request)[0]),
            finish_reason=c.finish_reason,
        )
        for i, c in enumerate(completions)
    ]
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=self.model_name,
        choices=choices,
        usage=self._usage(prompt, completions),
    )

  async def stream(
      self, request: ChatCompletionRequest, prompt: list, params: list[SamplingParams]
  ) -> AsyncIterator[str]:
    """Server-sent events: chat.completion.chunk objects, each choice's text as the engine samples it.

    Text that might still become a stop string (the last max_stop_len - 1 characters) or that ends in an
    incomplete UTF-8 character is held back until more tokens arrive, so each choice's pieces add up to
    its text in `complete`. A choice's finish chunk follows as soon as its request ends.
    """
    runs = [self._submit(prompt, p) for p in params]
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(choices: list[ChunkChoice], usage: Optional[Usage] = None) -> str:
      chunk = ChatCompletionChunk(
          id=request_id, created=created, model=self.model_name, choices=choices, usage=usage
      )
      return f"data: {chunk.model_dump_json()}\n\n"

    hold = max((len(s) for s in request.stop or ()), default=1) - 1
    sent, completions = [0] * len(runs), [None] * len(runs)
    deadline = time.monotonic() + self.request_timeout_s
    try:
      yield event(
          [
              ChunkChoice(index=i, delta=Delta(role="assistant", content=""))
              for i in range(len(runs))
          ]
      )
      while None in completions:
        for i, (session, future) in enumerate(runs):
          if completions[i] is not None:
            continue
          done = future.done() or time.monotonic() > deadline
          if done:  # raises the engine's error or the timeout as a RequestError
            completions[i] = await self._result(future)
            text, stop = self._text(completions[i].token_ids, request)
            safe = len(text)
          else:  # the engine thread appends to the history; a slice is an atomic copy
            text, stop = self._text(_history(session)[len(prompt) :], request)
            safe = len(text) if stop is not None else len(text) - hold
            while safe > sent[i] and text[safe - 1] == "\ufffd":
              safe -= 1
          if safe > sent[i]:
            yield event([ChunkChoice(index=i, delta=Delta(content=text[sent[i] : safe]))])
            sent[i] = safe
          if done:
            yield event(
                [ChunkChoice(index=i, delta=Delta(), finish_reason=completions[i].finish_reason)]
            )
        await asyncio.sleep(STREAM_POLL_S)
      if request.include_usage:
        yield event([], self._usage(prompt, completions))
    except RequestError as e:  # the status line has gone: the error travels as an event
      yield f"data: {e.response().model_dump_json()}\n\n"
    finally:  # a client that went away: the engine skips its requests that are still waiting
      for _, future in runs:
        future.cancel()
    yield "data: [DONE]\n\n"


def _error_response(error: RequestError) -> JSONResponse:
  return JSONResponse(error.response().model_dump(), status_code=error.status)


def create_app(service: ChatService) -> FastAPI:
  """The FastAPI app answering the OpenAI routes with `service`."""
  app = FastAPI(title="biomni_jax", description="OpenAI-compatible chat completions")

  @app.exception_handler(RequestError)
  async def _refused(_: Request, error: RequestError):
    return _error_response(error)

  @app.exception_handler(RequestValidationError)
  async def _invalid(_: Request, error: RequestValidationError):
    return _error_response(error_from_validation(error.errors()))

  @app.exception_handler(HTTPException)
  async def _http(request: Request, error: HTTPException):
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(error.status_code)
    message = f"{error.detail}: {request.method} {request.url.path}"
    return _error_response(RequestError(message, status=error.status_code, code=code))

  @app.exception_handler(Exception)
  async def _failed(_: Request, error: Exception):
    return _error_response(RequestError(f"{error!r}", status=500, type="server_error"))

  @app.get("/health")
  async def health() -> dict:
    return {"status": "ok", "engine_alive": service.engine.is_alive()}

  @app.get("/v1/models")
  async def models() -> ModelList:
    return ModelList(data=[service.model_card()])

  @app.get("/v1/models/{model_id}")
  async def model(model_id: str) -> ModelCard:
    if model_id != service.model_name:
      raise RequestError(
          f"The model `{model_id}` does not exist.",
          param="model",
          code="model_not_found",
          status=404,
      )
    return service.model_card()

  @app.post("/v1/chat/completions", response_model=None)
  async def chat_completions(request: ChatCompletionRequest):
    prompt, params = service.prepare(request)  # refusals come before the first byte of a stream
    if request.stream:
      return StreamingResponse(
          service.stream(request, prompt, params), media_type="text/event-stream"
      )
    return await service.complete(request, prompt, params)

  return app


def load_model(
    model: Optional[str] = None, workdir: Optional[str] = None, step=None, data=1, tensor=1
):
  """(engine layout, params on its first replica, tokenizer, default served name) from a Hugging Face
  directory or a training run's workdir; the layout is `data` x `tensor` of this host's devices."""
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.model.hf_io import config_from_hf, load_hf_checkpoint
  from biomni_jax.sampling import SamplerLayout
  from biomni_jax.tools.export_hf import describe_run, load_run

  if (model is None) == (workdir is None):
    raise ValueError("give exactly one of --model=HF_DIR or --workdir=RUN_DIR")
  if model is not None and not os.path.isdir(model):
    raise ValueError(
        f"--model={model!r} is not a directory (expected a Hugging Face Qwen3 directory with "
        f"config.json, safetensors and tokenizer files; tools/export_hf.py writes one)"
    )
  if model is not None:
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
      raise ValueError(
          f"--model={model!r} has no config.json (expected a Hugging Face Qwen3 directory)"
      )
    with open(path) as f:
      config = config_from_hf(json.load(f), source=path)
  else:
    config = describe_run(workdir).model_config
  # Read straight into the first replica's sharding: no device ever holds more than its shard.
  layout = SamplerLayout.create(config, data, tensor)
  if model is not None:
    _, params = load_hf_checkpoint(model, sharding=layout.replicas[0])
    return layout, params, load_tokenizer(model), os.path.basename(os.path.abspath(model))
  _, params, tokenizer, step = load_run(workdir, step, layout.replicas[0])
  return layout, params, tokenizer, f"{os.path.basename(os.path.abspath(workdir))}-step{step}"


def main(argv) -> int:
  import uvicorn
  from absl import flags, logging

  from biomni_jax.sampling import make_engine
  from biomni_jax.tools.export_hf import ExportError

  f = flags.FLAGS
  if len(argv) > 1:
    print(f"error: unexpected positional arguments {argv[1:]}", file=sys.stderr)
    return 2
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    layout, params, tokenizer, name = load_model(
        f.model, f.workdir, f.step, f.mesh_data, f.mesh_tensor
    )
  except (ValueError, OSError, ExportError) as e:  # CheckpointError and ExportError are ValueErrors
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  engine = make_engine(
      layout.model_config,
      layout,
      params,
      num_slots=f.num_slots,
      max_len=f.max_len,
      detokenize=tokenizer.decode,
      max_prefill_chunk=f.max_prefill_chunk,
  )
  del params  # each replica holds its own placed copy
  service = ChatService(
      engine, tokenizer, f.served_model_name or name, request_timeout_s=f.request_timeout_s
  )
  # Bound here (not by uvicorn) so that --port=0 can print the port it got before serving.
  sock = socket.create_server((f.host, f.port), backlog=2048)
  host, port = sock.getsockname()[:2]
  config = uvicorn.Config(
      create_app(service),
      log_level="info" if f.log_requests else "warning",
      access_log=f.log_requests,
      timeout_keep_alive=KEEP_ALIVE_S,
  )
  print(
      f"serving {service.model_name!r} on http://{host}:{port}/v1 (max_len {engine.max_len}, "
      f"{engine.num_slots} slots, sampler mesh data={layout.data} x tensor={layout.tensor})",
      flush=True,
  )
  try:
    uvicorn.Server(config).run(sockets=[sock])
  except KeyboardInterrupt:  # uvicorn shuts down on SIGINT, then re-raises it
    pass
  finally:
    sock.close()
    engine.shutdown()
  return 0


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string(
      "model", None, "A Hugging Face Qwen3 directory (config.json, safetensors, tokenizer)."
  )
  flags.DEFINE_string(
      "workdir", None, "Instead of --model: a training run's workdir (its newest checkpoint)."
  )
  flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
  flags.DEFINE_string(
      "served_model_name", None, "The model id clients pass (default: the directory's name)."
  )
  flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
  flags.DEFINE_integer("port", 8000, "Port to listen on (0 = any free port, printed at start).")
  flags.DEFINE_integer(
      "mesh_data", 1, "Sampler mesh: engine replicas on this host (-1 = as many as fit)."
  )
  flags.DEFINE_integer(
      "mesh_tensor",
      -1,
      "Sampler mesh: devices per replica, splitting heads, mlp and vocabulary "
      "(-1 = the rest of this host's devices).",
  )
  flags.DEFINE_integer("num_slots", 8, "KV-cache slots per replica: requests decoded together.")
  flags.DEFINE_integer("max_len", 4096, "Context length per request (prompt + completion).")
  flags.DEFINE_integer("max_prefill_chunk", 256, "Prefill chunk length (tokens).")
  flags.DEFINE_float(
      "request_timeout_s", 600.0, "A request still running after this fails with status 500."
  )
  flags.DEFINE_bool("log_requests", False, "Log every HTTP request to stderr.")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
