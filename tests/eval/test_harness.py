"""The harness: the oracle scores 1.0 on every Eval1 task through the real protocol and sandbox; summaries by
hand; bad input stops with a message naming what is wrong and exit status 2."""

import json

import pytest

from biomni_jax.env import eval1
from biomni_jax.env.sandbox import SandboxPool
from biomni_jax.eval import harness
from biomni_jax.eval.__main__ import main
from biomni_jax.eval.agents import OracleAgent, oracle_factory
from biomni_jax.eval.tasks import EvalInputError, load_eval1, load_embedded


def _record(task, instance, k, score):
  return harness.EpisodeRecord(task, instance, k, score, 1.0, 1, "solution", "x", "x", [])


def test_summarize_means_average_and_pass_at_k_by_hand():
  records = [
      _record("t1", "i1", 0, 1.0),
      _record("t1", "i1", 1, 0.0),
      _record("t1", "i2", 0, 0.0),
      _record("t1", "i2", 1, 0.0),
      _record("t2", "j1", 0, 1.0),
      _record("t2", "j1", 1, 0.5),
  ]
  s = harness.summarize(records, ks=(1, 2), task_order=["t2", "t1"])
  assert list(s["tasks"]) == ["t2", "t1"]
  assert s["tasks"]["t1"]["mean"] == 0.25 and s["tasks"]["t2"]["mean"] == 0.75
  assert s["average"] == 0.5 and s["episodes"] == 6
  # t1: instance i1 has 1 of 2 successes -> pass@1 0.5, pass@2 1; i2 none -> 0, 0
  assert s["tasks"]["t1"]["pass@1"] == 0.25 and s["tasks"]["t1"]["pass@2"] == 0.5
  # partial credit (0.5) is not a success
  assert s["tasks"]["t2"]["pass@1"] == 0.5 and s["tasks"]["t2"]["pass@2"] == 1.0


def test_oracle_replies_follow_the_protocol(eval1_sample_path):
  instances, _ = load_eval1(str(eval1_sample_path), ["patient_gene_detection"], limit_per_task=1)
  agent = OracleAgent(instances[0])
  first = agent([{"role": "user", "content": "task"}])
  assert "<execute>" in first and "<solution>" not in first
  second = agent([{"role": "user", "content": "t"}, {"role": "assistant", "content": first}])
  assert second.startswith("<think>") and "<solution>{'causal_gene': ['ENSG" in second


def test_oracle_scores_one_on_all_ten_eval1_tasks(eval1_sample_path):
  instances, envs = load_eval1(str(eval1_sample_path), tools=())
  assert len(instances) == 50
  with SandboxPool(max_workers=2) as pool:
    records = harness.run_text_agent(oracle_factory(), instances, envs, 1, pool, progress=False)
  summary = harness.summarize(records, ks=(1,))
  assert list(summary["tasks"]) == list(dict.fromkeys(x.task_name for x in instances))
  assert set(summary["tasks"]) == set(eval1.TASK_NAMES)
  for task, entry in summary["tasks"].items():
    assert entry["mean"] == 1.0 and entry["pass@1"] == 1.0 and entry["format"] == 1.0, task
  assert all(r.turns == 2 and r.termination == "solution" for r in records)
  assert all(
      "<observation>sandbox ok" in r.messages[3]["content"] for r in records
  )  # the probe really ran


def test_wrong_answers_score_zero(eval1_sample_path):
  """The harness grades what the agent says, not the ground truth: a wrong oracle scores 0."""
  instances, envs = load_eval1(
      str(eval1_sample_path), ["crispr_delivery", "rare_disease_diagnosis"], tools=()
  )

  def wrong(instance, k):
    answer = (
        "z" if instance.task_name == "crispr_delivery" else '{"OMIM_ID": 193700}'
    )  # int, not str
    return lambda messages: f"<think>guess</think><solution>{answer}</solution>"

  with SandboxPool(max_workers=1) as pool:
    records = harness.run_text_agent(wrong, instances, envs, 2, pool, progress=False)
  assert len(records) == 20 and all(r.score == 0.0 and r.format == 1.0 for r in records)


def test_cli_oracle_prints_table_and_saves_trajectories(eval1_sample_path, tmp_path, capsys):
  rc = main(
      [
          "--agent=oracle",
          f"--data={eval1_sample_path}",
          "--tasks=crispr_delivery",
          "--n_samples=2",
          f"--out={tmp_path}",
          "--quiet",
      ]
  )
  assert rc == 0
  out = capsys.readouterr().out
  assert "crispr_delivery" in out and "pass@2 (mean over tasks): 1.000" in out
  rows = [json.loads(l) for l in open(tmp_path / "trajectories.jsonl")]
  assert len(rows) == 10 and {r["sample_index"] for r in rows} == {0, 1}
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["average"] == 1.0 and summary["system"] == "oracle"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--checkpoint=/nonexistent/run"], "--checkpoint: '/nonexistent/run' does not exist"),
        (["--hf=/nonexistent/hf"], "--hf: '/nonexistent/hf' has no config.json"),
        (
            ["--agent=oracle", "--data=/nonexistent/eval1.parquet"],
            "--data: '/nonexistent/eval1.parquet' is not a file",
        ),
        (["--agent=oracle", "--tasks=no_such_family"], "unknown task name(s) ['no_such_family']"),
        (["--agent=oracle", "--n_samples=0"], "--n_samples: expected >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, expected, tmp_path, capsys):
  assert main(args + [f"--out={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and expected in err


def test_unknown_eval1_task_name(eval1_sample_path):
  with pytest.raises(EvalInputError, match=r"unknown task name\(s\) \['gwas'\]"):
    load_eval1(str(eval1_sample_path), ["gwas"])


def test_checkpoint_dir_without_checkpoints(tmp_path, capsys):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  (tmp_path / "run" / "tokenizer").mkdir()
  assert main([f"--checkpoint={tmp_path / 'run'}", f"--out={tmp_path / 'o'}"]) == 2
  assert "no tokenizer" in capsys.readouterr().err


def test_embedded_instances_are_the_requested_families():
  instances, envs = load_embedded(["sequence_qa"], "val", 3)
  assert [x.task_name for x in instances] == ["sequence_qa"] * 3 and set(envs) == {"sequence_qa"}
  assert all(x.split == "val" for x in instances)
