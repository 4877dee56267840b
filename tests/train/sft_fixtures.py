"""Small hand-made agent conversations and a fast SFT config for the tests of the SFT loop and the CLI."""

import numpy as np

from biomni_jax.data.trajectory import Trajectory, write_jsonl

GENES = ["BRCA1", "TP53", "EGFR", "KRAS", "CFTR", "APOE", "PTEN", "SOD1", "LDLR", "FBN1"]


def conversation(i: int) -> Trajectory:
  """Task -> think + execute -> observation -> think + solution; lengths vary with i."""
  rng = np.random.default_rng(i)
  genes = list(rng.choice(GENES, size=2 + i % 4, replace=False))
  answer = genes[0]
  messages = [
      {"role": "system", "content": "Use <execute> for code and <solution> for the answer."},
      {"role": "user", "content": f"Which gene is causal? Candidates: {', '.join(genes)}"},
      {
          "role": "assistant",
          "content": f"<think>\n1. [ ] rank {len(genes)} genes\n</think>\n"
          f"<execute>\nprint(rank({genes!r}))\n</execute>",
      },
      {"role": "user", "content": f"<observation>{' > '.join(genes)}</observation>"},
      {
          "role": "assistant",
          "content": f"<think>\n1. [✓] ranked\n</think>\n<solution>\n{answer}\n</solution>",
      },
  ]
  return Trajectory(
      messages=messages,
      task={"task_name": "toy", "instance_id": str(i)},
      reward=2.0,
      rewards={"correctness": 1.0, "format": 1.0},
  )


def write_conversations(path, count: int, start: int = 0) -> str:
  write_jsonl(path, [conversation(i) for i in range(start, start + count)])
  return str(path)


def fast_overrides(train_path, **extra) -> list[str]:
  """--config.* flags turning configs/demo.py into a seconds-long CPU run on the tiny preset."""
  flags = {
      "mode": "sft",  # configs/demo.py runs the whole pipeline by default
      "data.train_path": train_path,
      "model.overrides.hidden_size": 32,
      "model.overrides.intermediate_size": 64,
      "model.overrides.num_hidden_layers": 2,
      "model.overrides.head_dim": 8,
      "model.overrides.attention_block_q": 32,
      "model.overrides.attention_block_kv": 32,
      "model.overrides.logits_chunk": 64,
      "tokenizer.vocab_size": 512,
      "sft.seq_len": 128,
      "sft.batch_size": 4,
      "sft.progress_bar": False,
      "sft.eval_every": 0,
      "optimizer.warmup_steps": 2,
      "optimizer.lr": 1e-2,
  }
  flags.update(extra)
  return [f"--config.{k}={v}" for k, v in flags.items()]


def fast_config(train_path, **extra):
  """configs/demo.py with `fast_overrides` applied in-process."""
  import pathlib

  from biomni_jax.config_utils import load_config_file

  config = load_config_file(pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py")
  for flag in fast_overrides(train_path, **extra):
    key, value = flag[len("--config.") :].split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = (
        type(old)(value) if not isinstance(old, bool) else value in ("True", "true", "1", True)
    )
  return config
