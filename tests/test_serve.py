"""serve.py: the `openai` client against `python -m biomni_jax.serve` subprocesses on 127.0.0.1, over a tiny
random model exported to HF format; answers are checked against the engine run in this process."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import jax
import openai
import pytest

from biomni_jax import model as M
from biomni_jax import serve, serve_chat
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.sampling import SamplingParams, make_engine
from biomni_jax.tools.export_hf import write_hf_directory

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "tiny-agent"
MAX_LEN = 192
# One prefill bucket (16): every prompt length runs the same three programs, so each server compiles
# three programs once (compiling dominates these tests' time).
ENGINE_FLAGS = dict(num_slots=8, max_len=MAX_LEN, max_prefill_chunk=16)
QUESTION = [
    {"role": "system", "content": "Use <execute> for code and <solution> for the answer."},
    {"role": "user", "content": "Which gene is causal? BRCA1, TP53, EGFR"},
]
GENES = ("BRCA1", "TP53", "EGFR", "KRAS", "APOE", "MYC")


def gene_question(gene):
  return [{"role": "user", "content": f"Which gene? {gene}"}]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A random 2-layer Qwen3 with the embedded tokenizer, written by tools/export_hf."""
  root = tmp_path_factory.mktemp("serve")
  tokenizer = train_embedded_tokenizer(default_corpus(), 512, root / "tokenizer")
  config = M.get_preset(
      "tiny",
      vocab_size=len(tokenizer),
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=16,
  )
  params = M.init_params(config, jax.random.key(3))
  # Larger weights than init's 0.02 give a peaked, varied greedy text instead of one repeated token.
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, params)
  write_hf_directory(config, params, tokenizer, str(root / NAME))
  return str(root / NAME)


class LiveServer:
  """`python -m biomni_jax.serve` on a free port of 127.0.0.1, on `devices` simulated CPU devices."""

  def __init__(self, hf_dir, *flags, devices=1):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    engine = [f"--{k}={v}" for k, v in ENGINE_FLAGS.items()]
    self.proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "biomni_jax.serve",
            f"--model={hf_dir}",
            "--port=0",
            *engine,
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    line = self.proc.stdout.readline()
    url = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line)
    if not url:
      self.proc.kill()
      raise AssertionError(f"unexpected first line from the server: {line!r}")
    self.url, self.banner = url.group(1), line

  def client(self):
    return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=120)

  def stop(self) -> int:
    """SIGINT, as a user's Ctrl-C; the exit status."""
    self.proc.send_signal(signal.SIGINT)
    return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def live(hf_dir):
  server = LiveServer(hf_dir)
  yield server
  assert server.stop() == 0


@pytest.fixture(scope="module")
def client(live):
  return live.client()


@pytest.fixture(scope="module")
def service(hf_dir):
  """The server's engine and renderer in this process: the reference its answers must equal."""
  layout, params, tokenizer, name = serve.load_model(model=hf_dir)
  assert name == NAME and (layout.data, layout.tensor) == (1, 1)
  engine = make_engine(
      layout.model_config, layout, params, detokenize=tokenizer.decode, **ENGINE_FLAGS
  )
  yield serve_chat.ChatService(engine, tokenizer, name)
  engine.shutdown()


def chat(client, **kwargs):
  kwargs.setdefault("model", NAME)
  kwargs.setdefault("messages", QUESTION)
  return client.chat.completions.create(**kwargs)


def reference(service, max_new_tokens, messages=QUESTION, **params):
  """(prompt ids, completion, its text) straight from the engine, with the server's stop tokens."""
  prompt = service.renderer.prompt_ids(messages)
  completion = service.engine.generate(
      prompt,
      SamplingParams(
          max_new_tokens=max_new_tokens, stop_token_ids=service.stop_token_ids, **params
      ),
  ).result(timeout=120)
  ids = [t for t in completion.token_ids if t not in service.stop_token_ids]
  return prompt, completion, service.tokenizer.decode(ids, skip_special_tokens=True)


def test_models_endpoint_lists_the_served_model(live, client):
  assert [m.id for m in client.models.list().data] == [NAME]
  assert client.models.retrieve(NAME).id == NAME
  assert "data=1 x tensor=1" in live.banner
  assert httpx2.get(live.url.replace("/v1", "/health"), timeout=30).json() == {
      "status": "ok",
      "engine_alive": True,
  }


def test_greedy_completion_is_the_engines_text_of_the_rendered_prompt_with_usage(service, client):
  prompt, completion, text = reference(service, 24, temperature=0.0)
  response = chat(client, temperature=0, max_tokens=24)
  choice = response.choices[0]
  assert choice.message.content == text
  assert choice.message.role == "assistant" and choice.index == 0
  assert choice.finish_reason == completion.finish_reason
  assert response.usage.prompt_tokens == len(prompt)
  assert response.usage.completion_tokens == len(completion.token_ids)
  assert response.usage.total_tokens == len(prompt) + len(completion.token_ids)
  assert response.model == NAME and response.object == "chat.completion"


def test_stop_strings_cut_the_text_before_the_earliest_stop(client):
  full = chat(client, temperature=0, max_tokens=40).choices[0].message.content
  assert len(full) >= 12, f"the fixture model should write a longer text, got {full!r}"
  stop = full[6:9]
  cut = full[: full.index(stop)]
  response = chat(client, temperature=0, max_tokens=40, stop=["never-appears-xyz", stop])
  assert response.choices[0].message.content == cut
  assert response.choices[0].finish_reason == "stop"
  assert response.usage.completion_tokens < 40
  single = chat(client, temperature=0, max_tokens=40, stop=stop)  # a bare string is one stop
  assert single.choices[0].message.content == cut
  kept = chat(
      client,
      temperature=0,
      max_tokens=40,
      stop=[stop],
      extra_body={"include_stop_str_in_output": True},
  )
  assert kept.choices[0].message.content == cut + stop


def test_temperature_top_p_and_seed_reach_the_sampler(service, client):
  greedy = chat(client, temperature=0, max_tokens=16).choices[0].message.content
  # Nucleus sampling with a tiny p keeps only the most likely token: greedy text at any temperature.
  tiny_p = chat(client, temperature=1.5, top_p=1e-6, max_tokens=16, seed=1)
  assert tiny_p.choices[0].message.content == greedy
  hot = [
      chat(client, temperature=2.0, max_tokens=16, seed=s).choices[0].message.content
      for s in (7, 7, 8)
  ]
  assert hot[0] == hot[1]
  assert hot[0] == reference(service, 16, temperature=2.0, seed=7)[2]
  assert (
      hot[0] != greedy or hot[2] != greedy
  )  # temperature 2 over random weights does not stay greedy


def test_n_choices_are_the_requests_with_seeds_seed_plus_i_and_usage_sums_them(client):
  kwargs = dict(temperature=1.5, max_tokens=12)
  response = chat(client, n=3, seed=7, **kwargs)
  singles = [chat(client, seed=7 + i, **kwargs) for i in range(3)]
  assert [c.index for c in response.choices] == [0, 1, 2]
  assert [c.message.content for c in response.choices] == [
      s.choices[0].message.content for s in singles
  ]
  assert [c.finish_reason for c in response.choices] == [
      s.choices[0].finish_reason for s in singles
  ]
  assert len({c.message.content for c in response.choices}) > 1  # own seeds: not one sample thrice
  assert response.usage.prompt_tokens == singles[0].usage.prompt_tokens
  assert response.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
  assert (
      response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
  )


def stream_texts(chunks, n):
  """Per choice index: (joined text, finish reasons); and the usage chunk if any."""
  texts, finishes = [""] * n, [[] for _ in range(n)]
  for chunk in chunks:
    for c in chunk.choices:
      texts[c.index] += c.delta.content or ""
      if c.finish_reason:
        finishes[c.index].append(c.finish_reason)
  return texts, finishes


def test_streaming_pieces_add_up_to_the_non_streaming_text(client):
  full = chat(client, temperature=0, max_tokens=40).choices[0].message.content
  stop = full[8:11]
  expected = chat(client, temperature=0, max_tokens=40, stop=[stop])
  chunks = list(
      chat(
          client,
          temperature=0,
          max_tokens=40,
          stop=[stop],
          stream=True,
          stream_options={"include_usage": True},
      )
  )
  texts, finishes = stream_texts(chunks, 1)
  assert texts == [expected.choices[0].message.content] and finishes == [["stop"]]
  assert chunks[0].choices[0].delta.role == "assistant"
  assert chunks[-1].choices == []
  assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


def test_streaming_n_choices_carry_their_index(client):
  kwargs = dict(temperature=1.5, max_tokens=12, seed=11, n=2)
  expected = chat(client, **kwargs)
  chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kwargs))
  texts, finishes = stream_texts(chunks, 2)
  assert texts == [c.message.content for c in expected.choices]
  assert finishes == [[c.finish_reason] for c in expected.choices]
  assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


def test_a_stream_the_client_drops_leaves_the_server_answering(client):
  expected = chat(client, temperature=0, max_tokens=16).choices[0].message.content
  with chat(client, temperature=1.0, seed=5, max_tokens=120, n=2, stream=True) as dropped:
    next(iter(dropped))  # the role chunk, then the connection closes mid-stream
  assert chat(client, temperature=0, max_tokens=16).choices[0].message.content == expected


def test_concurrent_requests_each_get_their_own_answer(client):
  questions = [gene_question(g) for g in GENES[:5]]
  ask = lambda q: chat(client, messages=q, temperature=0, max_tokens=12).choices[0].message.content
  alone = [ask(q) for q in questions]
  with ThreadPoolExecutor(len(questions)) as pool:
    together = list(pool.map(ask, questions))
  assert together == alone


def test_load_48_clients_96_requests_all_answered_with_their_own_text(live, client):
  """Every request is answered (the http.server version lost 6-43 of 96 to connection resets) and each
  greedy answer is the one its question gets alone."""
  alone = {g: chat(client, messages=gene_question(g), temperature=0, max_tokens=8) for g in GENES}
  answers, failures = [], []
  lock = threading.Lock()

  def one_client(k):
    own = live.client()  # a client of its own: its own connections
    for j in range(2):
      gene = GENES[(2 * k + j) % len(GENES)]
      try:
        r = chat(own, messages=gene_question(gene), temperature=0, max_tokens=8)
        with lock:
          answers.append((gene, r.choices[0].message.content, r.usage.completion_tokens))
      except Exception as e:  # noqa: BLE001 - every failure is counted and reported
        with lock:
          failures.append(repr(e))

  start = time.monotonic()
  threads = [threading.Thread(target=one_client, args=(k,)) for k in range(48)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  elapsed = time.monotonic() - start
  assert failures == [], f"{len(failures)} of 96 requests failed, e.g. {failures[:3]}"
  assert len(answers) == 96
  for gene, text, tokens in answers:
    assert (text, tokens) == (
        alone[gene].choices[0].message.content,
        alone[gene].usage.completion_tokens,
    )
  assert elapsed < 60, f"96 requests from 48 clients took {elapsed:.1f} s"


@pytest.mark.parametrize("mesh", [("--mesh_tensor=2",), ("--mesh_data=2", "--mesh_tensor=1")])
def test_two_device_sampler_mesh_gives_the_one_device_greedy_tokens(hf_dir, client, mesh):
  questions = [QUESTION] + [gene_question(g) for g in GENES[:4]]
  ask = lambda c, q, model: c.chat.completions.create(
      model=model, messages=q, temperature=0, max_tokens=24
  )
  one_device = [ask(client, q, NAME) for q in questions]
  server = LiveServer(hf_dir, "--served_model_name=mesh-model", *mesh, devices=2)
  try:
    data, tensor = (2, 1) if "--mesh_data=2" in mesh else (1, 2)
    assert f"data={data} x tensor={tensor}" in server.banner
    meshed = server.client()
    with ThreadPoolExecutor(
        len(questions)
    ) as pool:  # concurrent: data=2 spreads them over both replicas
      two_devices = list(pool.map(lambda q: ask(meshed, q, "mesh-model"), questions))
  finally:
    assert server.stop() == 0
  for a, b in zip(one_device, two_devices):
    assert b.choices[0].message.content == a.choices[0].message.content
    assert (b.usage.completion_tokens, b.choices[0].finish_reason) == (
        a.usage.completion_tokens,
        a.choices[0].finish_reason,
    )
  assert len({r.choices[0].message.content for r in one_device}) > 1


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"model": NAME}, 400, "messages", "missing_required_parameter"),
        ({"messages": QUESTION}, 400, "model", "missing_required_parameter"),
        ({"model": NAME, "messages": []}, 400, "messages", "empty_array"),
        (
            {**{"model": NAME, "messages": QUESTION}, "temperature": 3},
            400,
            "temperature",
            "decimal_above_max_value",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "temperature": -0.5},
            400,
            "temperature",
            "decimal_below_min_value",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "temperature": "hot"},
            400,
            "temperature",
            "invalid_type",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "max_tokens": True},
            400,
            "max_tokens",
            "invalid_type",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "top_p": 1.5},
            400,
            "top_p",
            "decimal_above_max_value",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "max_tokens": 0},
            400,
            "max_tokens",
            "integer_out_of_range",
        ),
        ({**{"model": NAME, "messages": QUESTION}, "n": 0}, 400, "n", "integer_out_of_range"),
        ({**{"model": NAME, "messages": QUESTION}, "stop": [""]}, 400, "stop[0]", "invalid_value"),
        (
            {"model": NAME, "messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": NAME, "messages": [{"role": "user"}]},
            400,
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": ""}]},
            400,
            "messages[0].content",
            "invalid_value",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content",
            "invalid_value",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "tools": [{"type": "function"}]},
            400,
            "tools",
            "unsupported_parameter",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "logprobs": True},
            400,
            "logprobs",
            "unsupported_parameter",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "presence_penalty": 1.0},
            400,
            "presence_penalty",
            "unsupported_value",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "max_tokens": MAX_LEN},
            400,
            "messages",
            "context_length_exceeded",
        ),
        (
            {**{"model": NAME, "messages": QUESTION}, "max_tokens": MAX_LEN, "stream": True},
            400,
            "messages",
            "context_length_exceeded",
        ),
        ({"model": "gpt-4o", "messages": QUESTION}, 404, "model", "model_not_found"),
    ],
)
def test_bad_requests_get_openai_style_errors(client, body, status, param, code):
  with pytest.raises(openai.APIStatusError) as raised:
    client.post("/chat/completions", body=body, cast_to=object)
  error = raised.value
  assert error.status_code == status
  assert set(error.body) == {"message", "type", "param", "code"}
  assert (error.param, error.code, error.type) == (param, code, "invalid_request_error")
  assert param in error.body["message"] or code == "context_length_exceeded"


def test_text_content_parts_and_developer_role_are_accepted(client):
  plain = chat(client, temperature=0, max_tokens=8)
  parts = [
      {"role": "developer", "content": QUESTION[0]["content"]},
      {
          "role": "user",
          "content": [
              {"type": "text", "text": "Which gene is causal? "},
              {"type": "text", "text": "BRCA1, TP53, EGFR"},
          ],
      },
  ]
  assert chat(client, messages=parts, temperature=0, max_tokens=8).choices[0].message.content == (
      plain.choices[0].message.content
  )


def test_malformed_http_gets_json_errors(live):
  base = live.url
  bad_json = httpx2.post(
      f"{base}/chat/completions",
      content=b"{not json",
      headers={"content-type": "application/json"},
      timeout=30,
  )
  assert bad_json.status_code == 400
  assert "could not parse the JSON body" in bad_json.json()["error"]["message"]
  not_object = httpx2.post(f"{base}/chat/completions", json=[1, 2], timeout=30)
  assert not_object.status_code == 400 and not_object.json()["error"]["code"] == "invalid_type"
  nothing = httpx2.get(f"{base}/nothing", timeout=30)
  assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "unknown_url"
  wrong_method = httpx2.get(f"{base}/chat/completions", timeout=30)
  assert wrong_method.status_code == 405
  assert wrong_method.json()["error"]["code"] == "method_not_allowed"
  assert httpx2.get(f"{base}/models/other", timeout=30).json()["error"]["code"] == "model_not_found"


def test_cli_rejects_a_missing_model_and_load_model_a_mesh_that_does_not_fit(hf_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  missing = subprocess.run(
      [sys.executable, "-m", "biomni_jax.serve", f"--model={tmp_path / 'nope'}"],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )
  assert missing.returncode == 2 and "is not a directory with a config.json" in missing.stderr
  assert "Traceback" not in missing.stderr
  devices = len(jax.devices())
  with pytest.raises(ValueError, match=f"does not fit the {devices} devices"):
    serve.load_model(model=hf_dir, tensor=devices + 1)
