"""An OpenAI-compatible chat-completions server over the sampling engine.

    python -m biomni_jax.serve --model=HF_DIR --host=127.0.0.1 --port=8000
    python -m biomni_jax.serve --workdir=RUN_DIR [--step=N] --port=8000     # a training run's checkpoint

Endpoints: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health. Any OpenAI client
(Biomni's own agent through LangChain's ChatOpenAI, the `openai` package, curl) can use a trained model:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model=NAME, messages=[...], stop=["</execute>", "</solution>"],
                                   temperature=0.6, top_p=0.95, max_tokens=4096)

Messages are rendered by the project's one chat renderer (`data/chat.py`, Qwen3's format, reasoning kept
verbatim) and generation stops at `<|im_end|>`. Supported: temperature in [0, 2] (0 = greedy), top_p in
[0, 1] (0 = greedy), max_tokens / max_completion_tokens, stop (a string or a list), seed, n = 1, stream
(server-sent events, with stream_options.include_usage), and the vLLM extensions top_k and
include_stop_str_in_output. As in OpenAI's API the returned text ends before the stop string that ended it
and finish_reason is "stop" (a stop string or `<|im_end|>`) or "length" (max_tokens). Bad requests get
OpenAI's error body {"error": {"message", "type", "param", "code"}} with status 400 (invalid value), 404
(unknown model or path), 405 (method) or 500 (the engine failed).

Threads: ThreadingHTTPServer runs one thread per request; all of them submit to the one engine, whose own
thread batches their decoding (continuous batching).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional

from biomni_jax.data.chat import ChatRenderer, validate_message
from biomni_jax.data.tokenizer import IM_END, PAD_TOKEN
from biomni_jax.sampling import Completion, Engine, SamplingParams

MAX_BODY_BYTES = 16 << 20
STREAM_POLL_S = 0.01
ROLE_ALIASES = {"developer": "system"}  # newer OpenAI clients send system prompts as "developer"
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logit_bias")


class RequestError(Exception):
  """An invalid request: becomes OpenAI's error body with `status`."""

  def __init__(
      self,
      message: str,
      *,
      param: Optional[str] = None,
      code: Optional[str] = None,
      status: int = 400,
      type: str = "invalid_request_error",
  ):
    super().__init__(message)
    self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

  def body(self) -> dict:
    return {
        "error": {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
    }


@dataclasses.dataclass(frozen=True)
class ChatRequest:
  """A validated /v1/chat/completions body. messages: [{"role", "content"}] with string contents."""

  messages: list
  temperature: float
  top_p: float
  top_k: int
  max_tokens: Optional[int]
  stop: tuple
  seed: int
  stream: bool
  include_usage: bool
  include_stop_str: bool


# ------------------------------------------------------------------------------------------ validation


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RequestError(
        f"Invalid type for '{name}': expected a number, but got {type(value).__name__}.",
        param=name,
        code="invalid_type",
    )
  if value < low:
    raise RequestError(
        f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, but got "
        f"{value} instead.",
        param=name,
        code="decimal_below_min_value",
    )
  if value > high:
    raise RequestError(
        f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got "
        f"{value} instead.",
        param=name,
        code="decimal_above_max_value",
    )
  return float(value)


def _integer(body: dict, name: str, low: int, high: Optional[int] = None) -> Optional[int]:
  value = body.get(name)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int):
    raise RequestError(
        f"Invalid type for '{name}': expected an integer, but got {type(value).__name__}.",
        param=name,
        code="invalid_type",
    )
  if value < low or (high is not None and value > high):
    bounds = f">= {low}" + ("" if high is None else f" and <= {high}")
    raise RequestError(
        f"Invalid '{name}': expected an integer {bounds}, but got {value} instead.",
        param=name,
        code="integer_out_of_range",
    )
  return value


def _content_text(content: Any, where: str) -> Any:
  """A string, or OpenAI's list of content parts of which only {"type": "text"} parts are accepted."""
  if not isinstance(content, list):
    return content
  texts = []
  for j, part in enumerate(content):
    if (
        not isinstance(part, dict)
        or part.get("type") != "text"
        or not isinstance(part.get("text"), str)
    ):
      raise RequestError(
          f"Invalid '{where}[{j}]': only text content parts are supported, found {part!r:.80}.",
          param=f"{where}[{j}]",
          code="invalid_value",
      )
    texts.append(part["text"])
  return "".join(texts)


def _messages(body: dict) -> list:
  messages = body.get("messages")
  if messages is None:
    raise RequestError(
        "Missing required parameter: 'messages'.",
        param="messages",
        code="missing_required_parameter",
    )
  if not isinstance(messages, list):
    raise RequestError(
        f"Invalid type for 'messages': expected an array, but got {type(messages).__name__}.",
        param="messages",
        code="invalid_type",
    )
  if not messages:
    raise RequestError(
        "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        param="messages",
        code="empty_array",
    )
  out = []
  for i, message in enumerate(messages):
    where = f"messages[{i}]"
    if isinstance(message, dict):
      role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
      message = {"role": role, "content": _content_text(message.get("content"), f"{where}.content")}
    try:
      validate_message(message, where)
    except ValueError as e:
      param = str(e).split(":", 1)[0]
      raise RequestError(
          f"Invalid '{param}': {str(e).split(':', 1)[-1].strip()}",
          param=param,
          code="invalid_value",
      ) from None
    out.append(message)
  return out


def _stop(body: dict) -> tuple:
  stop = body.get("stop")
  if stop is None:
    return ()
  stops = [stop] if isinstance(stop, str) else stop
  if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
    raise RequestError(
        f"Invalid 'stop': expected a non-empty string or an array of non-empty strings, "
        f"but got {stop!r:.80}.",
        param="stop",
        code="invalid_value",
    )
  return tuple(stops)


def parse_chat_request(body: Any, served_model: str) -> ChatRequest:
  """Validates a decoded JSON body against what this server implements; raises RequestError."""
  if not isinstance(body, dict):
    raise RequestError(f"Invalid body: expected a JSON object, but got {type(body).__name__}.")
  model = body.get("model")
  if model is None:
    raise RequestError(
        "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
    )
  if model != served_model:
    raise RequestError(
        f"The model `{model}` does not exist. This server serves `{served_model}`.",
        param="model",
        code="model_not_found",
        status=404,
    )
  messages = _messages(body)
  for name in UNSUPPORTED:
    if body.get(name) not in (None, [], {}, "none"):
      raise RequestError(
          f"Unsupported parameter: '{name}' is not supported by this server.",
          param=name,
          code="unsupported_parameter",
      )
  if body.get("logprobs"):
    raise RequestError(
        "Unsupported parameter: 'logprobs' is not supported by this server.",
        param="logprobs",
        code="unsupported_parameter",
    )
  response_format = body.get("response_format")
  if response_format not in (None, {"type": "text"}):
    raise RequestError(
        'Unsupported value: \'response_format\' must be {"type": "text"}.',
        param="response_format",
        code="unsupported_value",
    )
  n = _integer(body, "n", 1)
  if n not in (None, 1):
    raise RequestError(
        f"Unsupported value: 'n' must be 1 on this server, but got {n}.",
        param="n",
        code="unsupported_value",
    )
  for penalty in ("presence_penalty", "frequency_penalty"):
    if _number(body, penalty, 0.0, -2.0, 2.0) != 0.0:
      raise RequestError(
          f"Unsupported value: '{penalty}' must be 0 on this server.",
          param=penalty,
          code="unsupported_value",
      )
  temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
  top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
  if top_p == 0.0:  # the limit of nucleus sampling as p -> 0 keeps only the most likely token
    temperature, top_p = 0.0, 1.0
  max_tokens = _integer(body, "max_completion_tokens", 1)
  if max_tokens is None:
    max_tokens = _integer(body, "max_tokens", 1)
  seed = _integer(body, "seed", -(2**63), 2**63 - 1)
  stream = body.get("stream") or False
  if not isinstance(stream, bool):
    raise RequestError(
        "Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type"
    )
  options = body.get("stream_options") or {}
  if not isinstance(options, dict):
    raise RequestError(
        "Invalid type for 'stream_options': expected an object.",
        param="stream_options",
        code="invalid_type",
    )
  return ChatRequest(
      messages=messages,
      temperature=temperature,
      top_p=top_p,
      top_k=_integer(body, "top_k", -1) or 0,
      max_tokens=max_tokens,
      stop=_stop(body),
      seed=secrets.randbits(32) if seed is None else seed % (2**32),
      stream=stream,
      include_usage=bool(options.get("include_usage")),
      include_stop_str=bool(body.get("include_stop_str_in_output")),
  )


# ------------------------------------------------------------------------------------------ the model side


def visible_text(text: str, stops: tuple, include_stop: bool) -> tuple[str, Optional[str]]:
  """`text` cut before (or, with include_stop, after) the earliest stop string in it; (text, that stop)."""
  hits = [(text.find(s), s) for s in stops if s in text]
  if not hits:
    return text, None
  index, stop = min(hits)
  return text[: index + len(stop) if include_stop else index], stop


class ChatService:
  """Turns validated requests into engine submissions and OpenAI response objects. Thread-safe."""

  def __init__(
      self, engine: Engine, tokenizer, model_name: str, *, request_timeout_s: float = 600.0
  ):
    self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
    self.renderer = ChatRenderer(tokenizer)
    self.stop_token_ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in (IM_END, PAD_TOKEN))
    self.request_timeout_s = request_timeout_s
    self.created = int(time.time())

  def model_card(self) -> dict:
    return {
        "id": self.model_name,
        "object": "model",
        "created": self.created,
        "owned_by": "biomni_jax",
        "max_model_len": self.engine.max_len,
    }

  def _prepare(self, request: ChatRequest) -> tuple[list, SamplingParams]:
    prompt = [int(t) for t in self.renderer.prompt_ids(request.messages)]
    room = self.engine.max_len - len(prompt)
    wanted = request.max_tokens or room
    if room < 1 or wanted > room:
      raise RequestError(
          f"This model's maximum context length is {self.engine.max_len} tokens. However, you requested "
          f"{len(prompt) + wanted} tokens ({len(prompt)} in the messages, {wanted} in the completion). Please "
          f"reduce the length of the messages or completion.",
          param="messages",
          code="context_length_exceeded",
      )
    params = SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        max_new_tokens=wanted,
        stop=request.stop,
        stop_token_ids=self.stop_token_ids,
        seed=request.seed,
    )
    return prompt, params

  def _submit(self, prompt: list, params: SamplingParams):
    session = self.engine.open_session()
    future = self.engine.submit(session, prompt, params)
    future.add_done_callback(lambda _: self.engine.close_session(session))
    return session, future

  def _await(self, future) -> Completion:
    try:
      completion = future.result(timeout=self.request_timeout_s)
    except FutureTimeout:
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

  def _text(self, token_ids, request: ChatRequest) -> tuple[str, Optional[str]]:
    ids = list(token_ids)
    if ids and ids[-1] in self.stop_token_ids:
      ids = ids[:-1]
    text = self.tokenizer.decode(ids, skip_special_tokens=True)
    return visible_text(text, request.stop, request.include_stop_str)

  def _envelope(self, object_type: str, request_id: str) -> dict:
    return {
        "id": request_id,
        "object": object_type,
        "created": int(time.time()),
        "model": self.model_name,
        "system_fingerprint": None,
    }

  @staticmethod
  def _usage(prompt: list, completion: Completion) -> dict:
    return {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(completion.token_ids),
        "total_tokens": len(prompt) + len(completion.token_ids),
    }

  def complete(self, request: ChatRequest) -> dict:
    """One chat.completion object."""
    prompt, params = self._prepare(request)
    _, future = self._submit(prompt, params)
    completion = self._await(future)
    text, _ = self._text(completion.token_ids, request)
    return {
        **self._envelope("chat.completion", f"chatcmpl-{uuid.uuid4().hex}"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": self._usage(prompt, completion),
    }

  def stream(self, request: ChatRequest) -> Iterator[dict]:
    """chat.completion.chunk objects, text sent as the engine samples it.

    Text that might still turn into a stop string (the last max_stop_len - 1 characters) or that ends in an
    incomplete UTF-8 character is held back until more tokens arrive, so the streamed pieces always add up to
    the final (cut) text of `complete`. Validation errors are raised before the first chunk.
    """
    prompt, params = self._prepare(request)
    session, future = self._submit(prompt, params)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    envelope = lambda: self._envelope("chat.completion.chunk", request_id)  # noqa: E731
    chunk = lambda delta, finish=None: {
        **envelope(),
        "choices": [  # noqa: E731
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        ],
    }
    yield chunk({"role": "assistant", "content": ""})
    hold = max((len(s) for s in request.stop), default=1) - 1
    sent, deadline = 0, time.monotonic() + self.request_timeout_s
    while not future.done() and time.monotonic() < deadline:
      new_ids = session.history[
          len(prompt) :
      ]  # the engine thread appends; a slice is an atomic copy
      text, stop = self._text(new_ids, request)
      safe = len(text) if stop is not None else len(text) - hold
      while safe > sent and text[safe - 1] == "\ufffd":
        safe -= 1
      if safe > sent:
        yield chunk({"content": text[sent:safe]})
        sent = safe
      time.sleep(STREAM_POLL_S)
    completion = self._await(future)
    text, _ = self._text(completion.token_ids, request)
    if len(text) > sent:
      yield chunk({"content": text[sent:]})
    yield chunk({}, completion.finish_reason)
    if request.include_usage:
      yield {**envelope(), "choices": [], "usage": self._usage(prompt, completion)}


# ------------------------------------------------------------------------------------------ HTTP


class _Handler(BaseHTTPRequestHandler):
  server_version = "biomni_jax-serve"
  service: ChatService  # set on the subclass made by make_http_server

  def log_message(self, format, *args):  # noqa: A002 - the base class's signature
    if getattr(self.server, "verbose", False):
      super().log_message(format, *args)

  def _send_json(self, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _send_error(self, error: RequestError) -> None:
    self._send_json(error.status, error.body())

  def do_GET(self):  # noqa: N802 - http.server's naming
    path = self.path.split("?", 1)[0].rstrip("/")
    if path == "/health":
      return self._send_json(200, {"status": "ok", "engine_alive": self.service.engine.is_alive()})
    if path == "/v1/models":
      return self._send_json(200, {"object": "list", "data": [self.service.model_card()]})
    if path.startswith("/v1/models/"):
      name = path[len("/v1/models/") :]
      if name == self.service.model_name:
        return self._send_json(200, self.service.model_card())
      return self._send_error(
          RequestError(
              f"The model `{name}` does not exist.",
              param="model",
              code="model_not_found",
              status=404,
          )
      )
    if path == "/v1/chat/completions":
      return self._send_error(
          RequestError(
              "Method GET is not allowed on /v1/chat/completions; use POST.",
              status=405,
              code="method_not_allowed",
          )
      )
    self._send_error(RequestError(f"Unknown path {self.path!r}.", status=404, code="unknown_url"))

  def do_POST(self):  # noqa: N802
    path = self.path.split("?", 1)[0].rstrip("/")
    if path != "/v1/chat/completions":
      if path in ("/v1/models", "/health"):
        return self._send_error(
            RequestError(
                f"Method POST is not allowed on {path}; use GET.",
                status=405,
                code="method_not_allowed",
            )
        )
      return self._send_error(
          RequestError(f"Unknown path {self.path!r}.", status=404, code="unknown_url")
      )
    try:
      length = int(self.headers.get("Content-Length") or 0)
      if length > MAX_BODY_BYTES:
        raise RequestError(
            f"Request body of {length} bytes exceeds {MAX_BODY_BYTES}.",
            status=413,
            code="request_too_large",
        )
      try:
        body = json.loads(self.rfile.read(length) or b"null")
      except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"We could not parse the JSON body of your request: {e}.") from None
      request = parse_chat_request(body, self.service.model_name)
      if not request.stream:
        return self._send_json(200, self.service.complete(request))
      events = self.service.stream(request)
      first = next(events)  # raises validation errors while a JSON error can still be sent
    except RequestError as e:
      return self._send_error(e)
    self._send_events(first, events)

  def _send_events(self, first: dict, events: Iterator[dict]) -> None:
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.end_headers()
    self.close_connection = True  # HTTP/1.0 framing: the stream ends when the connection closes
    try:
      self.wfile.write(f"data: {json.dumps(first)}\n\n".encode())
      try:
        for event in events:
          self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
          self.wfile.flush()
      except (
          RequestError
      ) as e:  # the engine failed mid-stream: the status line has gone, send the error
        self.wfile.write(f"data: {json.dumps(e.body())}\n\n".encode())
      self.wfile.write(b"data: [DONE]\n\n")
      self.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client went away; its session is closed when the engine finishes the turn


def make_http_server(
    service: ChatService, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False
) -> ThreadingHTTPServer:
  """A ThreadingHTTPServer (not yet serving) answering the OpenAI routes with `service`. port 0 = any free."""
  handler = type("ChatHandler", (_Handler,), {"service": service})
  server = ThreadingHTTPServer((host, port), handler)
  server.daemon_threads = True
  server.verbose = verbose
  return server


def load_model(
    model: Optional[str] = None,
    workdir: Optional[str] = None,
    step: Optional[int] = None,
    sharding=None,
):
  """(ModelConfig, params, tokenizer, default served name) from a HF directory or a training run's workdir."""
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.model.hf_io import load_hf_checkpoint

  if (model is None) == (workdir is None):
    raise ValueError("give exactly one of --model=HF_DIR or --workdir=RUN_DIR")
  if model is not None:
    if not os.path.isdir(model):
      raise ValueError(
          f"--model={model!r} is not a directory (expected a Hugging Face Qwen3 directory with "
          f"config.json, safetensors and tokenizer files; tools/export_hf.py writes one)"
      )
    config, params = load_hf_checkpoint(model, sharding=sharding)
    return config, params, load_tokenizer(model), os.path.basename(os.path.abspath(model))
  from biomni_jax.tools.export_hf import load_run

  config, params, tokenizer, step = load_run(workdir, step, sharding)
  return config, params, tokenizer, f"{os.path.basename(os.path.abspath(workdir))}-step{step}"


def main(argv) -> int:
  from absl import flags, logging

  from biomni_jax.sharding import ShardingRules, make_mesh
  from biomni_jax.tools.export_hf import ExportError

  f = flags.FLAGS
  if len(argv) > 1:
    print(f"error: unexpected positional arguments {argv[1:]}", file=sys.stderr)
    return 2
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    sharding = ShardingRules(make_mesh(fsdp=-1, tensor=f.tensor_parallel))
    config, params, tokenizer, name = load_model(f.model, f.workdir, f.step, sharding)
  except (
      ValueError,
      OSError,
      ExportError,
  ) as e:  # hf_io.CheckpointError and ExportError are ValueErrors
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  engine = Engine(
      config,
      params,
      sharding,
      num_slots=f.num_slots,
      max_len=f.max_len,
      detokenize=tokenizer.decode,
      max_prefill_chunk=f.max_prefill_chunk,
  )
  service = ChatService(
      engine, tokenizer, f.served_model_name or name, request_timeout_s=f.request_timeout_s
  )
  server = make_http_server(service, f.host, f.port, verbose=f.log_requests)
  host, port = server.server_address[:2]
  print(
      f"serving {service.model_name!r} on http://{host}:{port}/v1 (max_len {engine.max_len}, "
      f"{engine.num_slots} slots)",
      flush=True,
  )
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
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
  flags.DEFINE_integer("num_slots", 8, "KV-cache slots: requests decoded together.")
  flags.DEFINE_integer("max_len", 4096, "Context length per request (prompt + completion).")
  flags.DEFINE_integer("max_prefill_chunk", 256, "Prefill chunk length (tokens).")
  flags.DEFINE_integer(
      "tensor_parallel", 1, "Mesh 'tensor' axis size; the other devices form 'fsdp'."
  )
  flags.DEFINE_float(
      "request_timeout_s", 600.0, "A request still running after this fails with status 500."
  )
  flags.DEFINE_bool("log_requests", False, "Log every HTTP request to stderr.")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
