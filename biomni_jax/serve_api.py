"""The OpenAI chat-completions wire format that `serve.py` speaks, as pydantic models.

`ChatCompletionRequest` validates a request body: types are strict (no "1.5" for a number, no `true` for an
integer), ranges are OpenAI's, and parameters this server cannot honour are refused rather than ignored.
`error_from_validation` turns pydantic's errors into OpenAI's error body
{"error": {"message", "type", "param", "code"}}, naming the parameter as OpenAI does ("messages[0].role").
The response models serialise to what the `openai` client parses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticCustomError

MAX_N = 128  # choices per request; each is its own engine request
ROLE_ALIASES = {"developer": "system"}  # newer OpenAI clients send system prompts as "developer"
_OWN_CODES = ("unsupported_parameter", "unsupported_value", "invalid_value")


class RequestError(Exception):
  """A request this server refuses: becomes `ErrorResponse` with HTTP `status`."""

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

  def response(self) -> "ErrorResponse":
    return ErrorResponse(
        error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
    )


# ------------------------------------------------------------------------------------------ requests


class ChatMessage(BaseModel):
  """One message; OpenAI's list of content parts is accepted when every part is {"type": "text", "text"}
  (joined into one string)."""

  role: Literal["system", "user", "assistant", "developer"]
  content: Annotated[StrictStr, Field(min_length=1)]

  @field_validator("content", mode="before")
  @classmethod
  def _join_text_parts(cls, value: Any) -> Any:
    if not isinstance(value, list):
      return value
    for j, part in enumerate(value):
      if not (
          isinstance(part, dict)
          and part.get("type") == "text"
          and isinstance(part.get("text"), str)
      ):
        raise PydanticCustomError(
            "invalid_value",
            "only text content parts are supported, found {part} at index {j}",
            {"part": repr(part)[:80], "j": j},
        )
    return "".join(part["text"] for part in value)

  def rendered(self) -> dict:
    """The {"role", "content"} mapping `data/chat.py` renders."""
    return {"role": ROLE_ALIASES.get(self.role, self.role), "content": self.content}


class StreamOptions(BaseModel):
  include_usage: bool = False


def _unsupported(name: str, value: Any, allowed: Sequence[Any] = (None, [], {}, "none")) -> Any:
  if value not in allowed:
    raise PydanticCustomError(
        "unsupported_parameter", "'{name}' is not supported by this server", {"name": name}
    )
  return value


class ChatCompletionRequest(BaseModel):
  """A /v1/chat/completions body. `top_k` and `include_stop_str_in_output` are vLLM's extensions."""

  model_config = ConfigDict(strict=True)

  model: StrictStr
  messages: list[ChatMessage] = Field(min_length=1)
  temperature: float = Field(1.0, ge=0.0, le=2.0)
  top_p: float = Field(1.0, ge=0.0, le=1.0)
  top_k: int = Field(0, ge=-1)
  n: int = Field(1, ge=1, le=MAX_N)
  max_tokens: Optional[int] = Field(None, ge=1)
  max_completion_tokens: Optional[int] = Field(None, ge=1)
  stop: Optional[list[Annotated[StrictStr, Field(min_length=1)]]] = None
  seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)
  stream: bool = False
  stream_options: Optional[StreamOptions] = None
  include_stop_str_in_output: bool = False
  presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
  frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
  logprobs: Optional[bool] = None
  response_format: Optional[dict] = None
  tools: Any = None
  functions: Any = None
  tool_choice: Any = None
  function_call: Any = None
  logit_bias: Any = None

  @field_validator("stop", mode="before")
  @classmethod
  def _one_stop_is_a_list(cls, value: Any) -> Any:
    return [value] if isinstance(value, str) else value

  @field_validator("tools", "functions", "tool_choice", "function_call", "logit_bias")
  @classmethod
  def _no_tools(cls, value: Any, info) -> Any:
    return _unsupported(info.field_name, value)

  @field_validator("logprobs")
  @classmethod
  def _no_logprobs(cls, value: Any) -> Any:
    return _unsupported("logprobs", value, (None, False))

  @field_validator("response_format")
  @classmethod
  def _text_only(cls, value: Any) -> Any:
    if value not in (None, {"type": "text"}):
      raise PydanticCustomError("unsupported_value", 'only {"type": "text"} is supported')
    return value

  @field_validator("presence_penalty", "frequency_penalty")
  @classmethod
  def _no_penalties(cls, value: float) -> float:
    if value != 0.0:
      raise PydanticCustomError("unsupported_value", "must be 0 on this server")
    return value

  @property
  def include_usage(self) -> bool:
    return bool(self.stream_options and self.stream_options.include_usage)

  @property
  def completion_limit(self) -> Optional[int]:
    return self.max_completion_tokens or self.max_tokens


def _param(loc: Sequence[Any]) -> Optional[str]:
  """pydantic's loc ('body', 'messages', 0, 'role') -> OpenAI's param 'messages[0].role'."""
  param = ""
  for part in loc[1:] if loc and loc[0] == "body" else loc:
    if isinstance(part, int):
      param += f"[{part}]"
    else:
      param += f".{part}" if param else str(part)
  return param or None


def error_from_validation(errors: Sequence[dict]) -> RequestError:
  """The first of pydantic's (or FastAPI's) validation errors as an OpenAI-style RequestError."""
  error = errors[0]
  kind, param, value = error["type"], _param(error["loc"]), error.get("input")
  if kind == "json_invalid":
    detail = (error.get("ctx") or {}).get("error", error["msg"])
    return RequestError(f"We could not parse the JSON body of your request: {detail}.")
  if kind == "missing":
    return RequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )
  where = f"'{param}'" if param else "body"
  message = f"Invalid {where}: {error['msg']}, but got {value!r:.80}."
  if kind in _OWN_CODES:
    message = f"Invalid {where}: {error['msg']}."
    if kind == "unsupported_parameter":
      message = f"Unsupported parameter: {error['msg']}."
    return RequestError(message, param=param, code=kind)
  if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
    limit = next(iter(error["ctx"].values()))
    if isinstance(limit, int):
      code = "integer_out_of_range"
    else:
      code = "decimal_below_min_value" if kind.startswith("greater") else "decimal_above_max_value"
    return RequestError(message, param=param, code=code)
  if kind == "too_short" and isinstance(value, list) and not value:
    return RequestError(f"Invalid {where}: empty array.", param=param, code="empty_array")
  if kind.endswith("_type") or kind.endswith("_parsing"):
    return RequestError(message, param=param, code="invalid_type")
  return RequestError(message, param=param, code="invalid_value")


# ------------------------------------------------------------------------------------------ responses

FinishReason = Literal["stop", "length"]


class ErrorInfo(BaseModel):
  message: str
  type: str
  param: Optional[str]
  code: Optional[str]


class ErrorResponse(BaseModel):
  error: ErrorInfo


class Usage(BaseModel):
  """prompt_tokens counts the prompt once whatever `n` (as OpenAI bills it)."""

  prompt_tokens: int
  completion_tokens: int
  total_tokens: int


class AssistantMessage(BaseModel):
  role: Literal["assistant"] = "assistant"
  content: str


class Choice(BaseModel):
  index: int
  message: AssistantMessage
  logprobs: None = None
  finish_reason: FinishReason


class CompletionEnvelope(BaseModel):
  """The fields a chat completion and each of its streamed chunks share (in OpenAI's order); the
  subclasses fix `object`."""

  id: str
  object: str
  created: int
  model: str
  system_fingerprint: None = None


class ChatCompletion(CompletionEnvelope):
  object: Literal["chat.completion"] = "chat.completion"
  choices: list[Choice]
  usage: Usage


class Delta(BaseModel):
  role: Optional[Literal["assistant"]] = None
  content: Optional[str] = None


class ChunkChoice(BaseModel):
  index: int
  delta: Delta
  logprobs: None = None
  finish_reason: Optional[FinishReason] = None


class ChatCompletionChunk(CompletionEnvelope):
  object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
  choices: list[ChunkChoice]
  usage: Optional[Usage] = None


class ModelCard(BaseModel):
  id: str
  object: Literal["model"] = "model"
  created: int
  owned_by: str = "biomni_jax"
  max_model_len: int


class ModelList(BaseModel):
  object: Literal["list"] = "list"
  data: list[ModelCard]
