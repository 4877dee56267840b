"""serve.py: the `openai` client against the server on 127.0.0.1, over a tiny random model exported to HF format."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import jax
import openai
import pytest

from biomni_jax import model as M
from biomni_jax import serve
from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.sampling import Engine, SamplingParams
from biomni_jax.tools.export_hf import write_hf_directory

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "tiny-agent"
MAX_LEN = 192
QUESTION = [
    {"role": "system", "content": "Use <execute> for code and <solution> for the answer."},
    {"role": "user", "content": "Which gene is causal? BRCA1, TP53, EGFR"},
]


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


@pytest.fixture(scope="module")
def server(hf_dir):
  config, params, tokenizer, name = serve.load_model(model=hf_dir)
  assert name == NAME
  engine = Engine(
      config,
      params,
      num_slots=4,
      max_len=MAX_LEN,
      max_prefill_chunk=64,
      decode_block=32,
      detokenize=tokenizer.decode,
  )
  service = serve.ChatService(engine, tokenizer, name, request_timeout_s=120)
  http = serve.make_http_server(service, "127.0.0.1", 0)
  thread = threading.Thread(target=http.serve_forever, daemon=True)
  thread.start()
  yield service, f"http://127.0.0.1:{http.server_address[1]}/v1"
  http.shutdown()
  http.server_close()
  engine.shutdown()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server[1], api_key="unused", max_retries=0, timeout=120)


def chat(client, **kwargs):
  kwargs.setdefault("model", NAME)
  kwargs.setdefault("messages", QUESTION)
  return client.chat.completions.create(**kwargs)


def reference(service, max_new_tokens, messages=QUESTION, **params):
  """(prompt ids, completion) straight from the engine, with the server's stop tokens."""
  prompt = ChatRenderer(service.tokenizer).prompt_ids(messages)
  completion = service.engine.generate(
      prompt,
      SamplingParams(
          max_new_tokens=max_new_tokens, stop_token_ids=service.stop_token_ids, **params
      ),
  ).result(timeout=120)
  return prompt, completion


def test_models_endpoint_lists_the_served_model(client):
  assert [m.id for m in client.models.list().data] == [NAME]
  assert client.models.retrieve(NAME).id == NAME


def test_greedy_completion_is_the_engines_text_of_the_rendered_prompt_with_usage(server, client):
  service, _ = server
  prompt, completion = reference(service, 24, temperature=0.0)
  response = chat(client, temperature=0, max_tokens=24)
  choice = response.choices[0]
  ids = [t for t in completion.token_ids if t not in service.stop_token_ids]
  assert choice.message.content == service.tokenizer.decode(ids, skip_special_tokens=True)
  assert choice.message.role == "assistant" and choice.index == 0
  assert choice.finish_reason == ("length" if completion.finish_reason == "length" else "stop")
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


def test_temperature_top_p_and_seed_reach_the_sampler(server, client):
  service, _ = server
  greedy = chat(client, temperature=0, max_tokens=16).choices[0].message.content
  # Nucleus sampling with a tiny p keeps only the most likely token: greedy text at any temperature.
  assert (
      chat(client, temperature=1.5, top_p=1e-6, max_tokens=16, seed=1).choices[0].message.content
      == greedy
  )
  hot = [
      chat(client, temperature=2.0, max_tokens=16, seed=s).choices[0].message.content
      for s in (7, 7, 8)
  ]
  assert hot[0] == hot[1]
  _, expected = reference(service, 16, temperature=2.0, seed=7)
  expected_text = service.tokenizer.decode(
      [t for t in expected.token_ids if t not in service.stop_token_ids], skip_special_tokens=True
  )
  assert hot[0] == expected_text
  assert (
      hot[0] != greedy or hot[2] != greedy
  )  # temperature 2 over random weights does not stay greedy


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
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == expected.choices[0].message.content
  finishes = [
      c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
  ]
  assert finishes == ["stop"]
  assert chunks[0].choices[0].delta.role == "assistant"
  assert (
      chunks[-1].choices == []
      and chunks[-1].usage.completion_tokens == expected.usage.completion_tokens
  )


def test_concurrent_requests_each_get_their_own_answer(client):
  questions = [
      [{"role": "user", "content": f"Which gene? {g}"}]
      for g in ("BRCA1", "TP53", "EGFR", "KRAS", "APOE")
  ]
  alone = [
      chat(client, messages=q, temperature=0, max_tokens=12).choices[0].message.content
      for q in questions
  ]
  with ThreadPoolExecutor(len(questions)) as pool:
    together = list(
        pool.map(
            lambda q: chat(client, messages=q, temperature=0, max_tokens=12)
            .choices[0]
            .message.content,
            questions,
        )
    )
  assert together == alone


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"model": NAME}, 400, "messages", "missing_required_parameter"),
        ({"model": NAME, "messages": []}, 400, "messages", "empty_array"),
        (
            {"model": NAME, "messages": QUESTION, "temperature": 3},
            400,
            "temperature",
            "decimal_above_max_value",
        ),
        (
            {"model": NAME, "messages": QUESTION, "temperature": -0.5},
            400,
            "temperature",
            "decimal_below_min_value",
        ),
        (
            {"model": NAME, "messages": QUESTION, "temperature": "hot"},
            400,
            "temperature",
            "invalid_type",
        ),
        (
            {"model": NAME, "messages": QUESTION, "top_p": 1.5},
            400,
            "top_p",
            "decimal_above_max_value",
        ),
        (
            {"model": NAME, "messages": QUESTION, "max_tokens": 0},
            400,
            "max_tokens",
            "integer_out_of_range",
        ),
        ({"model": NAME, "messages": QUESTION, "n": 2}, 400, "n", "unsupported_value"),
        ({"model": NAME, "messages": QUESTION, "stop": [""]}, 400, "stop", "invalid_value"),
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
            "invalid_value",
        ),
        (
            {"model": NAME, "messages": QUESTION, "tools": [{"type": "function"}]},
            400,
            "tools",
            "unsupported_parameter",
        ),
        (
            {"model": NAME, "messages": QUESTION, "max_tokens": MAX_LEN},
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
  assert error.body["message"]


def test_malformed_http_gets_json_errors(server):
  base = server[1]
  bad_json = httpx2.post(f"{base}/chat/completions", content=b"{not json", timeout=30)
  assert (
      bad_json.status_code == 400
      and "could not parse the JSON body" in bad_json.json()["error"]["message"]
  )
  assert httpx2.get(f"{base}/nothing", timeout=30).status_code == 404
  wrong_method = httpx2.get(f"{base}/chat/completions", timeout=30)
  assert (
      wrong_method.status_code == 405
      and wrong_method.json()["error"]["code"] == "method_not_allowed"
  )
  assert httpx2.get(f"{base}/models/other", timeout=30).json()["error"]["code"] == "model_not_found"


def test_python_dash_m_serves_and_rejects_a_missing_model(hf_dir, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  missing = subprocess.run(
      [sys.executable, "-m", "biomni_jax.serve", f"--model={tmp_path / 'nope'}"],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )
  assert missing.returncode == 2 and "is not a directory" in missing.stderr
  proc = subprocess.Popen(
      [
          sys.executable,
          "-m",
          "biomni_jax.serve",
          f"--model={hf_dir}",
          "--port=0",
          "--max_len=128",
          "--num_slots=2",
          "--served_model_name=cli-model",
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
      cwd=REPO,
      env=env,
  )
  try:
    line = proc.stdout.readline()
    url = re.search(r"on (http://127\.0\.0\.1:\d+/v1)", line)
    assert url, f"unexpected first line {line!r}"
    cli = openai.OpenAI(base_url=url.group(1), api_key="unused", max_retries=0, timeout=120)
    response = cli.chat.completions.create(
        model="cli-model", messages=QUESTION, max_tokens=4, temperature=0
    )
    assert response.usage.completion_tokens <= 4 and response.choices[0].finish_reason in (
        "stop",
        "length",
    )
  finally:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
