"""Rejection sampling: best-of-n selection, rewards from the official graders, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from biomni_jax.data import rejection_sampling as rs
from biomni_jax.data.teachers import ScriptedTeacherFactory, TeacherError
from biomni_jax.data.trajectory import read_jsonl
from biomni_jax.env import eval1, protocol
from biomni_jax.env.episode import ScriptedAgent, run_episode
from biomni_jax.env.experts import InProcessExecutor
from biomni_jax.env.tasks import get_family, sandbox_setup_code

# The Eval1 task whose official grader each embedded family uses.
OFFICIAL_TASK = {
    "sequence_qa": "lab_bench_seqqa",
    "patient_gene_detection": "patient_gene_detection",
    "rare_disease_diagnosis": "rare_disease_diagnosis",
    "locus_causal_gene": "gwas_causal_gene_opentargets",
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
  with rs.answer_hiding_pool(2, out_path=str(tmp_path_factory.mktemp("rs_out") / "x.jsonl")) as p:
    yield p


def _by_id(path):
  return {t.task["instance_id"]: t for t in read_jsonl(path)}


# ----------------------------------------------------------------------------- selection, hand-computed


def _candidate(index, reward, chars, writable=True):
  ep = run_episode(
      ScriptedAgent(["<think>t</think><solution>" + "x" * chars + "</solution>"]), "p", None
  )
  if not writable:
    ep.messages[-1]["content"] = ""
  return rs.Candidate(
      index, ep, {"correctness": reward - 1, "format": 1.0}, reward, reward - 1, 0.0
  )


def test_select_best_prefers_reward_then_shortest_then_first():
  cands = [
      _candidate(0, 1.0, 1),
      _candidate(1, 2.0, 30),
      _candidate(2, 2.0, 10),
      _candidate(3, 2.0, 10),
  ]
  assert rs.select_best(cands).sample_index == 2
  assert rs.select_best(cands[:2]).sample_index == 1
  # A failed rollout or one with an empty message (not storable) is never selected.
  failed = rs.Candidate(4, None, {}, 0.0, 0.0, 0.0, error="teacher: boom")
  assert (
      rs.select_best(
          [_candidate(0, 2.0, 5, writable=False), _candidate(1, 1.0, 50), failed]
      ).sample_index
      == 1
  )
  assert rs.select_best([failed]) is None


def _fixed_teacher_factory(instance, k):
  """Per sample: 0 wrong answer, 1 correct after an extra turn, 2 and 3 the same short correct
  reply (a tie: the lower index wins), 4 correct without a think block (format 0)."""
  letters = [
      line.split(".")[0]
      for line in instance.prompt.splitlines()
      if line[:2] in {f"{c}." for c in "ABCDEF"}
  ]
  wrong = next(c for c in letters if c != instance.answer)
  solve = f"<think>\n1. [✓] solved\n</think>\n<solution>{instance.answer}</solution>"
  replies = {
      0: [f"<think>\n1. [✓] guessed\n</think>\n<solution>{wrong}</solution>"],
      1: ["<think>\n1. [ ] look first\n</think>\n<execute>print(len('ACGT'))</execute>", solve],
      2: [solve],
      3: [solve],
      4: [f"<solution>{instance.answer}</solution>"],
  }[k]
  return ScriptedAgent(replies)


_fixed_teacher_factory.name = "fixed"


def test_best_of_n_keeps_the_best_and_shortest_with_hand_computed_rewards(pool, tmp_path):
  out = tmp_path / "sft.jsonl"
  summary = rs.generate_sft_data(
      ["sequence_qa"],
      "train",
      2,
      5,
      _fixed_teacher_factory,
      out,
      pool,
      min_reward=0.0,
      progress=False,
  )
  kept = read_jsonl(out)
  assert len(kept) == 2 and summary.kept == 2 and summary.finished == 2 and summary.failed == 0
  for t in kept:
    assert t.info["candidate_rewards"] == [1.0, 2.0, 2.0, 2.0, 1.0]
    assert t.info["selected_index"] == 2 and t.info["n"] == 5 and t.info["teacher"] == "fixed"
    assert t.reward == 2.0 and t.rewards == {"correctness": 1.0, "format": 1.0}
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant"]
    assert (
        "digest_sequence" in t.messages[0]["content"]
    ), "the system prompt lists the family's tools"
  assert summary.mean_candidate_reward == pytest.approx(8 / 5)
  assert summary.mean_best_reward == summary.mean_kept_reward == 2.0
  # The extra-turn rollout really executed in the sandbox: its observation came from there.
  x = get_family("sequence_qa").instance("train", 0)
  with pool.open(tools=[]) as session:
    ep = run_episode(_fixed_teacher_factory(x, 1), x.prompt, session)
  assert ep.messages[2]["content"] == "<observation>4\n</observation>"


def test_min_reward_drops_tasks_without_a_good_enough_candidate(pool, tmp_path):
  factory = lambda x, k: _fixed_teacher_factory(x, 0)  # noqa: E731  (every sample answers wrong)
  factory.name = "wrong"
  summary = rs.generate_sft_data(
      ["sequence_qa"],
      "train",
      2,
      2,
      factory,
      tmp_path / "o.jsonl",
      pool,
      min_reward=2.0,
      progress=False,
  )
  assert (summary.finished, summary.kept, summary.kept_fraction) == (2, 0, 0.0)
  assert summary.mean_best_reward == 1.0
  assert not (tmp_path / "o.jsonl").exists() or read_jsonl(tmp_path / "o.jsonl") == []
  rows = [json.loads(line) for line in open(rs.manifest_path(tmp_path / "o.jsonl"))]
  assert [r["kept"] for r in rows] == [False, False] and rows[0]["candidate_rewards"] == [1.0, 1.0]


# ----------------------------------------------------------------------------- scripted experts, recomputed


def _replay(factory, instance):
  family = get_family(instance.task_name)
  env = rs.family_environment(family)
  executor = InProcessExecutor(
      list(dict.fromkeys([*family.tools, *rs.COMMON_TOOLS])), sandbox_setup_code(instance)
  )
  return run_episode(
      factory(instance, 0), instance.prompt, executor, max_turns=8, system=env.system
  )


def test_scripted_experts_selection_and_rewards_recomputed_from_official_graders(pool, tmp_path):
  factory = ScriptedTeacherFactory(mistake_rate=0.6, seed=7)
  families, n, per_family = ["sequence_qa", "patient_gene_detection"], 3, 4
  out = tmp_path / "sft.jsonl"
  summary = rs.generate_sft_data(
      families, "train", per_family, n, factory, out, pool, min_reward=0.0, progress=False
  )
  kept = _by_id(out)
  assert len(kept) == len(families) * per_family == summary.finished
  all_rewards, selection_mattered = [], False
  for name in families:
    for x in get_family(name).instances("train", per_family):
      t = kept[x.instance_id]
      # Rewards of the kept trajectory, recomputed from its messages with the official grader.
      assistant = [m["content"] for m in t.messages if m["role"] == "assistant"]
      solution = protocol.extract_solution(assistant[-1])
      correctness = (
          eval1.grade(OFFICIAL_TASK[name], solution, x.answer) if solution is not None else 0.0
      )
      fmt = protocol.format_reward(assistant)
      assert t.rewards == {"correctness": correctness, "format": fmt}
      assert t.reward == correctness + fmt == max(t.info["candidate_rewards"])
      assert t.info["official_grade"] == correctness
      assert t.task["answer"] == x.answer and t.task["task_name"] == name
      # Every candidate replayed in-process with the same per-rollout seed gives the same reward,
      # and the kept one is the best (shortest on ties).
      replays = []
      for k in range(n):
        ep = run_episode(
            factory(x, k),
            x.prompt,
            InProcessExecutor(
                list(dict.fromkeys([*get_family(name).tools, *rs.COMMON_TOOLS])),
                sandbox_setup_code(x),
            ),
            max_turns=8,
            system=t.messages[0]["content"],
        )
        grade = (
            eval1.grade(OFFICIAL_TASK[name], ep.solution, x.answer)
            if ep.solution is not None
            else 0.0
        )
        replays.append((grade + ep.format_reward(), ep))
      assert [r for r, _ in replays] == t.info["candidate_rewards"]
      best_k = min(
          range(n),
          key=lambda k: (-replays[k][0], sum(len(m["content"]) for m in replays[k][1].messages), k),
      )
      assert t.info["selected_index"] == best_k
      assert t.messages == replays[best_k][1].messages
      selection_mattered |= len(set(t.info["candidate_rewards"])) > 1
      all_rewards += t.info["candidate_rewards"]
  assert (
      selection_mattered
  ), "with mistake_rate 0.6 some task must have candidates of different rewards"
  assert summary.mean_candidate_reward == pytest.approx(np.mean(all_rewards))
  assert summary.mean_best_reward > summary.mean_candidate_reward


# ----------------------------------------------------------------------------- resume


def test_resume_cuts_a_torn_line_and_rebuilds_missing_manifest_rows(pool, tmp_path):
  out = tmp_path / "sft.jsonl"
  factory = ScriptedTeacherFactory(mistake_rate=0.3, seed=1)
  rs.generate_sft_data(
      ["sequence_qa"], "train", 3, 2, factory, out, pool, min_reward=0.0, progress=False
  )
  reference = out.read_text()
  os.remove(
      rs.manifest_path(out)
  )  # as if killed between the trajectory write and the manifest write
  with open(out, "a") as f:
    f.write('{"messages": [{"role": "sys')  # as if killed during a write
  finished = rs.load_finished(out)
  assert len(finished) == 3 and out.read_text() == reference
  summary = rs.generate_sft_data(
      ["sequence_qa"], "train", 3, 2, factory, out, pool, min_reward=0.0, progress=False
  )
  assert (summary.skipped, summary.rollouts, summary.finished) == (3, 0, 3)
  assert out.read_text() == reference


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    from biomni_jax.data import rejection_sampling as rs
    from biomni_jax.data.teachers import ScriptedTeacherFactory

    class Slow(ScriptedTeacherFactory):
        def __call__(self, instance, k):
            expert = super().__call__(instance, k)
            return lambda messages: (time.sleep(0.15), expert(messages))[1]

    with rs.answer_hiding_pool(2, out_path=sys.argv[1]) as pool:
        rs.generate_sft_data(["sequence_qa"], "train", 6, 2, Slow(mistake_rate=0.5, seed=3), sys.argv[1], pool,
                             min_reward=0.0, progress=False)
""")


def test_killed_run_resumes_without_duplicates_and_matches_an_uninterrupted_run(pool, tmp_path):
  out = tmp_path / "killed.jsonl"
  proc = subprocess.Popen(
      [sys.executable, "-c", _KILLED_RUN, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  manifest = rs.manifest_path(out)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(manifest) and len(open(manifest).readlines()) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = len(rs.load_finished(out))
  assert 2 <= done_before < 6

  factory = ScriptedTeacherFactory(mistake_rate=0.5, seed=3)
  resumed = rs.generate_sft_data(
      ["sequence_qa"], "train", 6, 2, factory, out, pool, min_reward=0.0, progress=False
  )
  assert resumed.skipped == done_before and resumed.rollouts == 2 * (6 - done_before)
  straight = rs.generate_sft_data(
      ["sequence_qa"],
      "train",
      6,
      2,
      factory,
      tmp_path / "straight.jsonl",
      pool,
      min_reward=0.0,
      progress=False,
  )
  ids = [t.task["instance_id"] for t in read_jsonl(out)]
  assert len(ids) == len(set(ids)) == 6
  a, b = _by_id(out), _by_id(tmp_path / "straight.jsonl")
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].to_json_dict() == b[key].to_json_dict()
  for field in (
      "finished",
      "kept",
      "mean_best_reward",
      "mean_candidate_reward",
      "mean_kept_reward",
  ):
    assert getattr(resumed, field) == getattr(straight, field)


# ----------------------------------------------------------------------------- failures and hiding


def test_failed_rollouts_leave_the_task_for_a_restart_and_fatal_errors_stop(pool, tmp_path):
  expert = ScriptedTeacherFactory(mistake_rate=0.0)
  flaky_id = get_family("sequence_qa").instance("train", 1).instance_id

  def flaky(instance, k):
    if instance.instance_id == flaky_id and k == 1:
      raise TeacherError("endpoint down")
    return expert(instance, k)

  out = tmp_path / "sft.jsonl"
  summary = rs.generate_sft_data(["sequence_qa"], "train", 3, 2, flaky, out, pool, progress=False)
  assert (summary.finished, summary.failed, summary.kept) == (2, 1, 2)
  assert flaky_id not in _by_id(out)
  summary = rs.generate_sft_data(["sequence_qa"], "train", 3, 2, expert, out, pool, progress=False)
  assert (summary.skipped, summary.finished, summary.failed) == (2, 3, 0) and flaky_id in _by_id(
      out
  )

  def fatal(instance, k):
    raise TeacherError("HTTP 401: bad key", fatal=True)

  with pytest.raises(TeacherError, match="bad key"):
    rs.generate_sft_data(
        ["sequence_qa"], "train", 4, 2, fatal, tmp_path / "f.jsonl", pool, progress=False
    )


def test_bad_arguments_are_named(pool, tmp_path):
  with pytest.raises(ValueError, match="n_samples >= 1"):
    rs.generate_sft_data(
        ["sequence_qa"], "train", 1, 0, _fixed_teacher_factory, tmp_path / "o.jsonl", pool
    )
  with pytest.raises(KeyError, match="expected one of"):
    rs.generate_sft_data(
        ["no_such_family"], "train", 1, 1, _fixed_teacher_factory, tmp_path / "o.jsonl", pool
    )
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"task": {"task_name": "a"}}\n{"task": 1}\n')
  with pytest.raises(
      ValueError, match="bad.jsonl: expected a task with 'task_name' and 'instance_id'"
  ):
    rs.load_finished(bad)


def test_sessions_cannot_read_the_packaged_eval1_answers(pool):
  from biomni_jax.env.eval1 import sample_path

  data_dir = str(sample_path().parent)
  assert "eval1_sample_50.jsonl" in os.listdir(data_dir)  # visible here, hidden in the session
  if os.geteuid() != 0:
    pytest.skip("path hiding needs the sandbox's mount namespaces (root)")
  probe = f"import os\ntry:\n    print(sorted(os.listdir({data_dir!r})))\nexcept OSError as e:\n    print('denied', e)"
  with pool.open(tools=[]) as session:
    output = session.run(probe, timeout_s=30).output
  assert output.startswith("denied") or output.strip() == "[]", output
  assert "eval1" not in output


def test_a_run_in_which_every_task_fails_raises(pool, tmp_path):
  def broken(instance, k):
    raise TeacherError("endpoint down")

  with pytest.raises(RuntimeError, match="all 2 pending tasks failed.*endpoint down"):
    rs.generate_sft_data(
        ["sequence_qa"], "train", 2, 1, broken, tmp_path / "o.jsonl", pool, progress=False
    )
  assert rs.load_finished(tmp_path / "o.jsonl") == {}


# ----------------------------------------------------------------------------- determinism


class _FirstFinishesLast(ScriptedTeacherFactory):
  """The scripted expert, except that instance 0 replies only once the other `wait_for` tasks are in the
  manifest: the rollouts finish out of task order, whatever the scheduling."""

  def __init__(self, manifest, wait_for):
    super().__init__()
    self.manifest, self.wait_for = manifest, wait_for

  def __call__(self, instance, k):
    expert = super().__call__(instance, k)
    if not instance.instance_id.endswith("/0"):
      return expert

    def reply(messages):
      deadline = time.monotonic() + 60
      while time.monotonic() < deadline and _rows(self.manifest) < self.wait_for:
        time.sleep(0.02)
      return expert(messages)

    return reply


def _rows(path):
  return len(open(path).readlines()) if os.path.exists(path) else 0


def test_the_data_file_is_in_task_order_whatever_order_rollouts_finish_in(pool, tmp_path):
  out = tmp_path / "ordered.jsonl"
  manifest = rs.manifest_path(out)

  def sample(tasks, wait_for):  # -> the data file's instance ids
    factory = _FirstFinishesLast(manifest, wait_for)
    rs.generate_sft_data(
        ["sequence_qa"],
        "train",
        tasks,
        1,
        factory,
        out,
        pool,
        min_reward=0.0,
        concurrency=4,
        progress=False,
    )
    return [t.task["instance_id"] for t in read_jsonl(out)]

  def task_order(tasks):
    return [x.instance_id for x in get_family("sequence_qa").instances("train", tasks)]

  written = sample(4, wait_for=3)
  finished = [json.loads(line)["instance_id"] for line in open(manifest)]
  assert finished[-1] == task_order(4)[0] and sorted(finished) == task_order(4)  # out of task order
  assert written == task_order(4)
  # A resumed run that adds tasks keeps the file in task order too.
  assert sample(6, wait_for=0) == task_order(6)
