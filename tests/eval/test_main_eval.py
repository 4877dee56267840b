"""mode=eval of `python -m biomni_jax.main`: the harness from a config and a workdir (eval/evaluate.py), and the
absl flags of `python -m biomni_jax.eval`."""

import json
import pathlib
import subprocess
import sys

import jax
import pytest

from biomni_jax import model as M
from biomni_jax import pipeline
from biomni_jax.config_utils import ConfigError, load_config_file
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.env import eval1
from biomni_jax.eval import evaluate
from biomni_jax.eval.__main__ import main as eval_cli
from biomni_jax.main import run
from biomni_jax.model.config import get_preset
from biomni_jax.model.hf_io import save_hf_checkpoint
from tests.train.sft_fixtures import fast_config, write_conversations

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.py"


def main_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "biomni_jax.main", f"--config={DEMO}", "--config.mode=eval", *args],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=ROOT,
  )


def read_jsonl(path):
  return [json.loads(line) for line in open(path) if line.strip()]


@pytest.fixture
def tiny_hf(tmp_path):
  """A random 1-layer Qwen3 with the embedded tokenizer, as a Hugging Face directory named 'hf'."""
  tokenizer = train_embedded_tokenizer(default_corpus(), 512, str(tmp_path / "tok"))
  cfg = get_preset("tiny", vocab_size=len(tokenizer), num_hidden_layers=1)
  hf = tmp_path / "hf"
  save_hf_checkpoint(cfg, M.init_params(cfg, jax.random.key(0)), str(hf))
  tokenizer.save_pretrained(str(hf))
  return hf


def test_mode_eval_runs_a_hugging_face_model_and_writes_the_table(tiny_hf, tmp_path):
  workdir = tmp_path / "eval"
  proc = main_cli(
      f"--workdir={workdir}",
      f"--config.eval.model={tiny_hf}",
      "--config.eval.tasks=sequence_qa",
      "--config.eval.tasks_per_family=2",
      "--config.eval.samples=2",
      "--config.eval.max_turns=2",
      "--config.eval.max_new_tokens_per_turn=6",
      "--config.eval.sandbox_workers=1",
      "--config.eval.num_slots=4",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  episodes = read_jsonl(workdir / "eval_episodes.jsonl")
  assert sorted((e["instance_id"], e["sample_index"]) for e in episodes) == [
      ("sequence_qa/0/val/0", 0),
      ("sequence_qa/0/val/0", 1),
      ("sequence_qa/0/val/1", 0),
      ("sequence_qa/0/val/1", 1),
  ]
  for (
      e
  ) in episodes:  # the model replied (untrained: short random text, graded by the protocol's rules)
    assert [m["role"] for m in e["messages"][:2]] == ["user", "assistant"], e["termination"]
  result = json.loads((workdir / "eval.json").read_text())
  mean = sum(e["score"] for e in episodes) / 4
  assert result["system"] == "hf" and result["model"] == str(tiny_hf)
  assert result["data"] == "embedded" and result["eval"]["samples"] == 2
  assert set(result["tasks"]) == {"sequence_qa"}
  row = result["tasks"]["sequence_qa"]
  assert row["hf"] == pytest.approx(mean) and {"hf_pass@1", "hf_pass@2"} <= set(row)
  assert result["average"] == {"hf": pytest.approx(mean)} and result["episodes"] == {"hf": 4}
  details = result["details"]["tasks"]["sequence_qa"]
  assert (details["episodes"], details["instances"]) == (4, 2)
  assert (
      "sequence_qa" in proc.stdout and '"episodes": 4' in proc.stdout
  )  # the table, the SUMMARY line


def test_mode_eval_oracle_scores_one_on_every_eval1_task_and_never_overwrites(tmp_path):
  workdir = tmp_path / "eval"
  overrides = {
      "mode": "eval",
      "eval.model": "oracle",
      "eval.data": "eval1_sample",
      "eval.limit_per_task": 1,
      "eval.samples": 1,
  }
  summary = run(load_config_file(DEMO, overrides), str(workdir))
  assert summary["average"] == 1.0 and summary["episodes"] == 10
  result = json.loads((workdir / "eval.json").read_text())
  assert list(result["tasks"]) == list(
      dict.fromkeys(r.task_name for r in eval1.load(eval1.sample_path()))
  )
  assert set(result["tasks"]) == set(eval1.TASK_NAMES)
  assert all(row == {"oracle": 1.0, "oracle_pass@1": 1.0} for row in result["tasks"].values())
  assert result["average"] == {"oracle": 1.0} and result["episodes"] == {"oracle": 10}
  assert len(read_jsonl(workdir / "eval_episodes.jsonl")) == 10
  before = (workdir / "eval.json").read_bytes(), (workdir / "eval_episodes.jsonl").read_bytes()
  again = main_cli(f"--workdir={workdir}", "--config.eval.model=oracle")
  assert again.returncode == 2 and "Traceback" not in again.stderr
  assert "eval.json exists" in again.stderr and "never replaced" in again.stderr
  after = (workdir / "eval.json").read_bytes(), (workdir / "eval_episodes.jsonl").read_bytes()
  assert after == before


def test_mode_eval_evaluates_the_run_in_its_workdir(tmp_path):
  """eval.model "" = the SFT run in --workdir (its newest checkpoint); the run's files stay as they were."""
  workdir = tmp_path / "sft"
  config = fast_config(
      write_conversations(tmp_path / "train.jsonl", 8),
      **{"sft.num_steps": 3, "sft.tensorboard": False},
  )
  run(config, str(workdir))
  run_config = (workdir / "config.json").read_bytes()
  config.mode = "eval"
  small = dict(tasks="sequence_qa", tasks_per_family=1, samples=1, max_turns=1)
  small.update(max_new_tokens_per_turn=4, num_slots=2)
  for key, value in small.items():
    config.eval[key] = value
  summary = run(config, str(workdir))
  assert summary["system"] == "sft" and summary["model"] == f"{workdir}@3"
  assert (workdir / "config.json").read_bytes() == run_config
  result = json.loads((workdir / "eval.json").read_text())
  (episode,) = read_jsonl(workdir / "eval_episodes.jsonl")
  assert episode["messages"][1]["role"] == "assistant" and episode["turns"] == 1
  success = float(episode["score"] >= 1.0 - 1e-6)
  assert result["tasks"] == {"sequence_qa": {"sft": episode["score"], "sft_pass@1": success}}


def _touch_run(path, step):
  (path / "checkpoints" / str(step)).mkdir(parents=True)
  (path / "config.json").write_text("{}")


def test_resolve_model_follows_the_workdir_conventions(tmp_path):
  assert evaluate.resolve_model("oracle", str(tmp_path)) == ("oracle", "")
  run_dir = tmp_path / "run"
  _touch_run(run_dir, 3)
  assert evaluate.resolve_model("", str(run_dir)) == ("run", str(run_dir))
  assert evaluate.resolve_model(str(run_dir), "/elsewhere") == ("run", str(run_dir))
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  assert evaluate.resolve_model(str(hf), "") == ("hf", str(hf))
  piped = tmp_path / "pipeline"
  _touch_run(piped / "sft", 250)
  (piped / "rl").mkdir()  # RL not started yet: the SFT model is the most trained one
  assert evaluate.resolve_model(str(piped), "") == ("run", str(piped / "sft"))
  _touch_run(piped / "rl", 4)
  assert evaluate.resolve_model(str(piped), "") == ("run", str(piped / "rl"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(
      ConfigError, match=r"'eval.model': .* holds no model.*looked for in --workdir"
  ):
    evaluate.resolve_model("", str(empty))
  (empty / "config.json").write_text("{}")
  with pytest.raises(ConfigError, match=r"has config.json but neither checkpoints/"):
    evaluate.resolve_model(str(empty), "")


def test_demo_eval_section_samples_like_the_pipeline_evaluation():
  config = load_config_file(DEMO)
  values = evaluate._section(config)
  settings = evaluate.harness.ModelEvalSettings(**{k: values[k] for k in evaluate._SETTINGS})
  assert settings == pipeline.eval_settings(config)
  assert (values["split"], values["tasks_per_family"], values["samples"]) == ("val", 6, 2)


def test_unknown_eval_field_is_named(tmp_path):
  config = load_config_file(DEMO)
  config.unlock()
  config.eval.temprature = 0.5
  with pytest.raises(ConfigError, match=r"'eval': unknown field\(s\) \['temprature'\]"):
    evaluate._section(config)


# ------------------------------------------------------------------------ python -m biomni_jax.eval flags


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--agent=oracle", "--n_samples=abc"], "flag --n_samples=abc: invalid literal for int()"),
        (["--agent=oracle", "--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        (["--agent=robot"], "flag --agent=robot: value should be one of <oracle>"),
        (
            ["--data=eval1_sample"],
            "give exactly one of --checkpoint=RUN_DIR, --hf=HF_DIR or --agent",
        ),
        (["--agent=oracle", "--hf=/x"], "give exactly one of"),
        (["--agent=oracle", "--k=one"], "--k: expected comma-separated integers, found 'one'"),
        (["--agent=oracle", "--n_samples=2", "--k=3"], "--k: expected values in 1..2"),
        (["--agent=oracle", "--split=dev"], "--split: expected one of ['train', 'val', 'test']"),
        (["--agent=oracle", "positional"], "unexpected positional arguments ['positional']"),
    ],
)
def test_eval_cli_bad_flags_exit_2_with_one_line(args, expected, tmp_path, capsys):
  assert eval_cli(args + [f"--out={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_eval_cli_needs_out(capsys):
  assert eval_cli(["--agent=oracle"]) == 2
  assert "--out is required" in capsys.readouterr().err


def test_eval_cli_flags_do_not_leak_between_calls(tmp_path, capsys):
  """Each call parses its own flags: a value given once does not stick to the next call."""
  assert eval_cli(["--agent=oracle", "--n_samples=0", f"--out={tmp_path}"]) == 2
  capsys.readouterr()
  rc = eval_cli(
      [
          "--agent=oracle",
          "--data=eval1_sample",
          "--tasks=crispr_delivery",
          "--limit_per_task=1",
          "--quiet",
          f"--out={tmp_path}",
      ]
  )
  assert rc == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["episodes"] == 1 and summary["average"] == 1.0
