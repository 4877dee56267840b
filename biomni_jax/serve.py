"""An OpenAI-compatible chat-completions server over the sampling engine (FastAPI + uvicorn).

    python -m biomni_jax.serve --model=HF_DIR --port=8000 [--mesh_data=1 --mesh_tensor=-1]
    python -m biomni_jax.serve --workdir=RUN_DIR [--step=N] --port=8000     # a training run's checkpoint
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model=NAME, messages=[...], stop=["</execute>"], max_tokens=4096, n=8)

Routes: POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health; request parameters
and error bodies are `serve_api.py`'s. Messages are rendered by `data/chat.py` (Qwen3's format) and
generation stops at `<|im_end|>`; as in OpenAI's API the text ends before the stop string that ended it.
Each of the `n` choices is its own engine request; with a `seed`, choice i samples with seed + i.
The engine runs on this host's sampler mesh (`--mesh_data` replicas x `--mesh_tensor` devices each, see
`sampling/layout.py`) in its own threads, batching all clients' requests; the event loop only renders
prompts and awaits the engine's futures.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from biomni_jax import serve_api as api
from biomni_jax.serve_api import RequestError
from biomni_jax.serve_chat import ChatService

# Longer than clients' idle keep-alive (httpx: 5 s), so a client never reuses a connection the server is closing.
KEEP_ALIVE_S = 30


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
    return _error_response(api.error_from_validation(error.errors()))

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
  async def models() -> api.ModelList:
    return api.ModelList(data=[service.model_card()])

  @app.get("/v1/models/{model_id}")
  async def model(model_id: str) -> api.ModelCard:
    if model_id != service.model_name:
      message = f"The model `{model_id}` does not exist."
      raise RequestError(message, param="model", code="model_not_found", status=404)
    return service.model_card()

  @app.post("/v1/chat/completions", response_model=None)
  async def chat_completions(request: api.ChatCompletionRequest):
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
  if model is not None:
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
      raise ValueError(
          f"--model={model!r} is not a directory with a config.json (expected a Hugging Face Qwen3 "
          f"directory: config.json, safetensors and tokenizer files; tools/export_hf.py writes one)"
      )
    with open(path) as f:
      config = config_from_hf(json.load(f), source=path)
  else:
    config = describe_run(workdir).model_config
  # Read straight into the first replica's sharding and the engine's dtype: no device ever holds more
  # than its shard.
  layout = SamplerLayout.create(config, data, tensor)
  if model is not None:
    _, params = load_hf_checkpoint(model, config.compute_dtype, layout.replicas[0])
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
  limits = dict(num_slots=f.num_slots, max_len=f.max_len, max_prefill_chunk=f.max_prefill_chunk)
  engine = make_engine(layout.model_config, layout, params, detokenize=tokenizer.decode, **limits)
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
