"""Does a model reproduce the answer its tool printed? Teacher-forced accuracy on held-out answer tokens.

    python experiments/answer_copy.py --model=DIR/sft [--where=solution] [--tasks_per_family=20]
    python experiments/answer_copy.py --model=DIR/base --where=observation

Fresh val-split tasks of each family are solved by the scripted expert (best of 2, as the demo's teacher
data); on each kept trajectory the model reads the conversation and predicts every answer token from the
true prefix (argmax). --where=solution scores the answer inside the final `<solution>` block (what the
agent must write: a copy of the line its code printed after `answer ->`); --where=observation scores that
printed line itself, inside the tool output (what a base pretrained on tool outputs could predict from the
ranked rows above it). Printed per family: accuracy of the first answer token, of the others, and the
fraction of answers right in every token. Val instances never share an answer with train ones, so a
right id here was read from the context, not memorized. --model is a run's workdir (SFT or RL) or a
Hugging Face directory (a pipeline's DIR/base). Also printed per family: `same tokens`, the fraction of
answers whose tokens in the solution equal those of the printed answer line in the observation (a
byte-level BPE splits an id differently after a space, a newline or `>`: only equal tokens can be
copied one for one), and the accuracy at each answer token position (`by position`).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags

from biomni_jax.env.experts import ANSWER_MARKER

_MODEL = flags.DEFINE_string(
    "model", None, "a run workdir (config.json + checkpoints/) or a Hugging Face dir"
)
_WHERE = flags.DEFINE_enum(
    "where", "solution", ["solution", "observation"], "which copy of the answer to score"
)
_TASKS = flags.DEFINE_integer("tasks_per_family", 20, "val tasks per family")
_FAMILIES = flags.DEFINE_list(
    "families",
    ["sequence_qa", "locus_causal_gene", "rare_disease_diagnosis", "patient_gene_detection"],
    "task families",
)

ANSWER_MARK = ANSWER_MARKER + "\n"


def answer_span(text: str, where: str) -> tuple[int, int] | None:
  """Character span [a, b) of the answer inside one message's text, or None when it has none."""
  if where == "solution":
    if "<solution>" not in text or "</solution>" not in text:
      return None
    a = text.index("<solution>") + len("<solution>")
    b = text.index("</solution>", a)
    while a < b and text[a].isspace():
      a += 1
    return a, len(text[:b].rstrip())
  if ANSWER_MARK not in text:
    return None
  a = text.index(ANSWER_MARK) + len(ANSWER_MARK)
  return a, text.index("\n", a) if "\n" in text[a:] else len(text)


def answer_tokens(tokenizer, trajectory, where: str) -> list[int] | None:
  """The answer's token ids as they appear in the conversation (the last message that has it)."""
  role = "assistant" if where == "solution" else "user"
  for m in reversed(trajectory.messages):
    span = answer_span(m["content"], where) if m["role"] == role else None
    if span:
      text = m["content"]
      k0, k1 = (len(tokenizer.encode(text[:c], add_special_tokens=False)) for c in span)
      return tokenizer.encode(text, add_special_tokens=False)[k0:k1]
  return None


def answer_hits(agent, trajectory, where: str) -> list[int] | None:
  """1/0 per answer token: argmax of the model at the previous position equals the token."""
  import jax.numpy as jnp

  from biomni_jax.data.chat import render
  from biomni_jax.model import api

  role = "assistant" if where == "solution" else "user"
  message = next(
      (
          m
          for m in reversed(trajectory.messages)
          if m["role"] == role and answer_span(m["content"], where)
      ),
      None,
  )
  if message is None:
    return None
  tok, text = agent.tokenizer, message["content"]
  ids, _ = render(trajectory.messages, tok)
  content = tok.encode(text, add_special_tokens=False)
  start = next(
      (
          i
          for i in range(len(ids) - len(content), -1, -1)
          if list(ids[i : i + len(content)]) == content
      ),
      None,
  )
  if start is None:
    return None
  a, b = answer_span(text, where)
  k0, k1 = (len(tok.encode(text[:c], add_special_tokens=False)) for c in (a, b))
  if k1 <= k0:
    return None
  logits = api.forward(agent.model_config, agent.params, jnp.asarray(np.asarray(ids)[None]))[0]
  pred = np.asarray(jnp.argmax(logits, -1))
  return [int(pred[start + k - 1] == ids[start + k]) for k in range(k0, k1)]


def main(argv):
  del argv
  from biomni_jax.data.rejection_sampling import answer_hiding_pool, generate_sft_data
  from biomni_jax.data.teachers import make_teacher_factory
  from biomni_jax.data.trajectory import read_jsonl
  from biomni_jax.eval.agents import load_hf_agent, load_run_agent

  if not _MODEL.value or not os.path.isdir(_MODEL.value):
    raise SystemExit(
        f"--model: expected a run workdir or a Hugging Face directory, found {_MODEL.value!r}"
    )
  is_run = os.path.isdir(os.path.join(_MODEL.value, "checkpoints"))
  agent = load_run_agent(_MODEL.value) if is_run else load_hf_agent(_MODEL.value)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "val.jsonl")
    with answer_hiding_pool(2, out_path=path) as pool:
      generate_sft_data(
          _FAMILIES.value,
          "val",
          _TASKS.value,
          2,
          make_teacher_factory("scripted", mistake_rate=0.3, seed=0),
          path,
          pool,
          max_turns=8,
          min_reward=2.0,
          progress=True,
      )
    trajectories = read_jsonl(path)
  stats: dict[str, list[list[int]]] = {}
  same: dict[str, list[bool]] = {}
  for t in trajectories:
    t.messages = [m for m in t.messages if m["role"] != "system"]  # as the demo's SFT data
    hits = answer_hits(agent, t, _WHERE.value)
    if hits is not None:
      stats.setdefault(t.task["task_name"], []).append(hits)
    printed, solved = (answer_tokens(agent.tokenizer, t, w) for w in ("observation", "solution"))
    if printed is not None and solved is not None:
      same.setdefault(t.task["task_name"], []).append(printed == solved)
  print(f"{agent.source}: teacher-forced answer tokens in the {_WHERE.value}")
  for family, rows in stats.items():
    rest = [h for r in rows for h in r[1:]]
    print(
        f"  {family:26s} answers {len(rows):3d}  first token {np.mean([r[0] for r in rows]):.2f}  "
        f"other tokens {np.mean(rest) if rest else float('nan'):.2f}  whole answer "
        f"{np.mean([all(r) for r in rows]):.2f}  same tokens {np.mean(same.get(family, [0])):.2f}"
    )
    width = max(len(r) for r in rows)
    by_position = [np.mean([r[k] for r in rows if len(r) > k]) for k in range(width)]
    print("    by position " + " ".join(f"{a:.2f}" for a in by_position))


if __name__ == "__main__":
  app.run(main)
