"""Teachers: seeded scripted experts, and the OpenAI-compatible client against a fake local server."""

import http.server
import json
import threading
import time

import pytest

from biomni_jax.data import teachers
from biomni_jax.data.teachers import (
    OpenAITeacher,
    OpenAITeacherConfig,
    ScriptedTeacherFactory,
    TeacherError,
    make_teacher_factory,
    restore_stop_string,
)
from biomni_jax.env import protocol
from biomni_jax.env.episode import run_episode
from biomni_jax.env.experts import InProcessExecutor
from biomni_jax.env.tasks import get_family, sandbox_setup_code

STOPS = protocol.stop_strings()


# ----------------------------------------------------------------------------- a fake chat-completions server


class FakeChatServer:
  """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 that plays a script of responses.

  Each script item answers one request: {"content": str, "finish_reason": str, "reasoning": str},
  {"status": int} (an error with a JSON body), or {"sleep": seconds, ...} (delay, then the rest).
  The last item repeats once the script runs out. `requests` records the decoded request bodies.
  """

  def __init__(self, script):
    self.script, self.requests, self.lock = list(script), [], threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.requests.append(
              {"path": self.path, "auth": self.headers.get("Authorization"), **body}
          )
          item = server.script.pop(0) if len(server.script) > 1 else server.script[0]
        if "sleep" in item:
          time.sleep(item["sleep"])
        if "status" in item:
          payload = {"error": {"message": f"fake failure {item['status']}", "type": "server_error"}}
          self._send(item["status"], payload)
          return
        message = {"role": "assistant", "content": item["content"]}
        if "reasoning" in item:
          message["reasoning_content"] = item["reasoning"]
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": item.get("finish_reason", "stop"),
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

      def _send(self, status, payload):
        data = json.dumps(payload).encode()
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
          pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def _teacher(server, sleeps=None, **overrides):
  options = dict(
      model="fake-teacher",
      base_url=server.url,
      api_key="test-key",
      timeout_s=5.0,
      max_retries=3,
      backoff_s=0.01,
  )
  options.update(overrides)
  return OpenAITeacher(
      OpenAITeacherConfig(**options), sleep=(sleeps.append if sleeps is not None else time.sleep)
  )


MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2+2?"}]


# ----------------------------------------------------------------------------- stop strings


@pytest.mark.parametrize(
    "text, finish, expected",
    [
        (
            "<think>t</think><execute>print(1)",
            "stop",
            "<think>t</think><execute>print(1)</execute>",
        ),
        ("<think>t</think><solution>A", "stop", "<think>t</think><solution>A</solution>"),
        # The server kept the stop string already: unchanged.
        (
            "<think>t</think><solution>A</solution>",
            "stop",
            "<think>t</think><solution>A</solution>",
        ),
        # Cut by the token limit: not a stop, unchanged (the episode will ask for a repair).
        ("<think>t</think><execute>print(1)", "length", "<think>t</think><execute>print(1)"),
        # An earlier block is closed; the later one is open.
        (
            "<execute>a</execute> then <SOLUTION>B",
            "stop",
            "<execute>a</execute> then <SOLUTION>B</solution>",
        ),
        # Ended by itself (end of sequence) with no open action tag: unchanged.
        ("<think>t</think>no action", "stop", "<think>t</think>no action"),
    ],
)
def test_restore_stop_string(text, finish, expected):
  assert restore_stop_string(text, STOPS, finish) == expected


def test_client_sends_the_protocol_request_and_restores_the_stop_string():
  with FakeChatServer([{"content": "<think>\nplan\n</think>\n<execute>\nprint(4)\n"}]) as server:
    reply = _teacher(server, temperature=0.6, top_p=0.95, max_tokens=77)(MESSAGES)
  assert reply == "<think>\nplan\n</think>\n<execute>\nprint(4)\n</execute>"
  assert protocol.parse_reply(reply).kind == "execute"
  request = server.requests[0]
  assert request["path"] == "/v1/chat/completions"
  assert request["auth"] == "Bearer test-key"
  assert request["model"] == "fake-teacher" and request["messages"] == MESSAGES
  assert request["stop"] == ["</execute>", "</solution>"]
  assert (request["temperature"], request["top_p"], request["max_tokens"]) == (0.6, 0.95, 77)


def test_separate_reasoning_is_wrapped_in_think():
  with FakeChatServer([{"content": "<solution>4", "reasoning": " 2+2 is 4 "}]) as server:
    reply = _teacher(server)(MESSAGES)
  assert reply == "<think>\n2+2 is 4\n</think>\n<solution>4</solution>"
  assert protocol.format_reward([reply]) == 1.0


def test_base_url_and_key_come_from_the_environment(monkeypatch):
  with FakeChatServer([{"content": "<think>x</think><solution>4"}]) as server:
    monkeypatch.setenv(teachers.BASE_URL_ENV, server.url)
    monkeypatch.setenv(teachers.API_KEY_ENV, "env-key")
    teacher = OpenAITeacher(OpenAITeacherConfig(model="m", max_retries=0))
    assert teacher(MESSAGES).endswith("</solution>")
  assert server.requests[0]["auth"] == "Bearer env-key"


def test_missing_api_key_is_a_clear_error(monkeypatch):
  monkeypatch.delenv(teachers.API_KEY_ENV, raising=False)
  with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
    OpenAITeacher(OpenAITeacherConfig(model="m", base_url="http://127.0.0.1:9/v1"))


# ----------------------------------------------------------------------------- errors, retries, timeouts


def test_retries_server_errors_with_exponential_backoff():
  sleeps = []
  script = [
      {"status": 500},
      {"status": 503},
      {"status": 429},
      {"content": "<think>x</think><solution>4"},
  ]
  with FakeChatServer(script) as server:
    teacher = _teacher(server, sleeps, backoff_s=0.5, max_backoff_s=1.5)
    assert teacher(MESSAGES) == "<think>x</think><solution>4</solution>"
  assert len(server.requests) == 4
  assert teacher.stats == {"requests": 4, "retries": 3, "failures": 0}
  # 0.5 * 2**k capped at 1.5, plus up to 25% jitter.
  for wait, base in zip(sleeps, [0.5, 1.0, 1.5]):
    assert base <= wait <= 1.25 * base


def test_gives_up_after_max_retries_naming_the_endpoint_and_status():
  with FakeChatServer([{"status": 500}]) as server:
    teacher = _teacher(server, [], max_retries=2)
    with pytest.raises(TeacherError, match=r"3 attempt\(s\) failed; last: HTTP 500") as info:
      teacher(MESSAGES)
  assert len(server.requests) == 3 and not info.value.fatal
  assert "fake-teacher" in str(info.value) and "127.0.0.1" in str(info.value)


def test_client_errors_are_fatal_and_not_retried():
  with FakeChatServer([{"status": 401}]) as server:
    with pytest.raises(TeacherError, match="not retried: HTTP 401") as info:
      _teacher(server, [])(MESSAGES)
  assert len(server.requests) == 1 and info.value.fatal


def test_timeout_is_retried_then_reported():
  with FakeChatServer([{"sleep": 1.0, "content": "late"}]) as server:
    teacher = _teacher(server, [], timeout_s=0.2, max_retries=1)
    start = time.monotonic()
    with pytest.raises(TeacherError, match=r"2 attempt\(s\) failed; last: timed out after 0.2 s"):
      teacher(MESSAGES)
    assert time.monotonic() - start < 1.5
  assert len(server.requests) == 2


def test_a_slow_first_attempt_then_success():
  script = [{"sleep": 1.0, "content": "late"}, {"content": "<think>x</think><solution>4"}]
  with FakeChatServer(script) as server:
    assert _teacher(server, [], timeout_s=0.3)(MESSAGES).endswith("<solution>4</solution>")


def test_concurrency_is_bounded():
  with FakeChatServer([{"sleep": 0.2, "content": "<think>x</think><solution>4"}]) as server:
    teacher = _teacher(server, max_concurrency=2)
    active, peak, lock = [0], [0], threading.Lock()
    create = teacher._client.chat.completions.create

    def counting_create(**kw):
      with lock:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
      try:
        return create(**kw)
      finally:
        with lock:
          active[0] -= 1

    teacher._client.chat.completions.create = counting_create
    threads = [threading.Thread(target=teacher, args=(MESSAGES,)) for _ in range(6)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert len(server.requests) == 6 and peak[0] == 2


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -1.0),
        ("max_tokens", 0),
        ("max_retries", -1),
        ("timeout_s", 0.0),
        ("max_concurrency", 0),
        ("stop", "</x>"),
    ],
)
def test_bad_config_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f"OpenAITeacherConfig.{field}"):
    OpenAITeacherConfig(model="m", **{field: value})


def test_unknown_options_are_named():
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['temprature'\]"):
    make_teacher_factory("openai", model="m", temprature=0.1)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['mistake'\]"):
    make_teacher_factory("scripted", mistake=0.1)
  with pytest.raises(KeyError, match="expected a teacher kind"):
    make_teacher_factory("gpt")


def test_openai_factory_shares_one_teacher(monkeypatch):
  monkeypatch.setenv(teachers.API_KEY_ENV, "k")
  factory = make_teacher_factory("openai", model="m", base_url="http://127.0.0.1:9/v1")
  x = get_family("sequence_qa").instance("train", 0)
  assert factory(x, 0) is factory(x, 1)
  assert "m @ http://127.0.0.1:9/v1" in factory.name


# ----------------------------------------------------------------------------- scripted experts


def _play(factory, instance, k):
  family = get_family(instance.task_name)
  return run_episode(
      factory(instance, k),
      instance.prompt,
      InProcessExecutor(list(family.tools), sandbox_setup_code(instance)),
      max_turns=6,
  )


def test_scripted_teachers_are_seeded_per_instance_and_sample():
  factory = make_teacher_factory("scripted", mistake_rate=0.9, seed=1)
  assert isinstance(factory, ScriptedTeacherFactory)
  xs = get_family("sequence_qa").instances("train", 8)
  runs = [[_play(factory, x, k).messages for k in range(3)] for x in xs]
  again = [[_play(factory, x, k).messages for k in range(3)] for x in reversed(xs)][::-1]
  assert runs == again, "a rollout's content depends only on (seed, instance, sample index)"
  assert any(len({str(m) for m in per_instance}) > 1 for per_instance in runs), "samples differ"
  other = make_teacher_factory("scripted", mistake_rate=0.9, seed=2)
  assert [[_play(other, x, k).messages for k in range(3)] for x in xs] != runs
