"""Biomni-R0 phase 2 for Qwen3-8B: multi-turn GRPO-family RL from the SFT checkpoint.

Recipe (docs/recipe.md section 1.2): Dr.GRPO (A = R - group mean), G = 8 trajectories per task, 32 tasks per
rollout batch, 8 optimizer steps per rollout batch (mini-batches of 32 trajectories), lr 1e-6 constant,
AdamW (0.9, 0.999) wd 0.01, grad clip 1.0, PPO clip 0.2 / 0.28 with dual-clip 3, no KL or entropy term,
seq-mean-token-mean; sampling temperature 0.6, top_p 0.95; at most 64 turns, 61,440 context tokens per
engine call and 4,096 new tokens per turn; 65,536 positions via YaRN factor 2 over 32,768; 2 epochs.
Trajectories over 32,768 tokens that fail the format check are dropped from the loss.
Layout of the train step: v5p-64 (32 chips), 32-way FSDP; each mini-batch of 32 trajectories is packed
into rows of 65,536 tokens, one row per chip in the worst case. (On v5p-32 with 2 micro-batches of 16 rows
the step peaks at 96.6 GiB per chip, over the 95 GiB of HBM.)

  python -m biomni_jax.main --config=configs/qwen3_8b_rl.py --workdir=gs://.../rl8b \
      --config.rl.init_from_sft=gs://.../sft8b
  python -m biomni_jax.tools.aot --config=configs/qwen3_8b_rl.py --topology=v5p:2x4x4
"""

import ml_collections

from biomni_jax.config_utils import sibling_config
from biomni_jax.train.losses import default_policy_loss_config
from biomni_jax.train.optimizer import default_optimizer_config


def get_config():
  # The SFT recipe's model, tokenizer, mesh and AOT target (model.init_from, a Hugging Face directory, is
  # used when rl.init_from_sft is ""); its data and sft sections are the SFT run's own.
  c = sibling_config(__file__, "qwen3_8b_sft.py")
  c.mode = "rl"
  del c.data, c.sft

  rl = c.rl = ml_collections.ConfigDict()
  rl.init_from_sft = ""  # the SFT run's workdir (configs/qwen3_8b_sft.py)
  rl.task_families = [
      "sequence_qa",
      "locus_causal_gene",
      "rare_disease_diagnosis",
      "patient_gene_detection",
  ]
  rl.tasks_per_family = 1_100  # ~4.4k task instances
  rl.task_split = "train"
  rl.task_seed = 0
  rl.epochs = 2
  rl.num_steps = 0
  rl.num_groups = 32
  rl.group_size = 8
  rl.num_minibatches = 8
  rl.micro_batches = 1
  rl.seq_len = 65_536
  rl.pack = True
  rl.rows_multiple_of = 32  # one row per chip
  rl.logprob_batch_rows = 16
  rl.advantage_estimator = "drgrpo"
  rl.temperature = 0.6
  rl.loss = default_policy_loss_config()
  rl.rollout = ml_collections.ConfigDict(
      dict(
          max_turns=64,
          max_context_tokens=61_440,
          max_new_tokens_per_turn=4_096,
          top_p=0.95,
          top_k=0,
          max_staleness=0,
          max_concurrent_episodes=256,
          tool_timeout_s=1_800.0,
          overlong_threshold=32_768,
      )
  )
  # One sampler per v5p host: 4 chips, tensor-parallel (8 KV heads / 4), colocated with the trainer.
  # Rollouts are batch-synchronous (max_staleness 0), so the sampler frees its weights and KV cache for
  # each train step (release_during_train) and the two never hold the chips' memory at once. 16
  # full-length sessions hold their KV cache at once (41 GiB per chip); idle sessions beyond that wait
  # in host memory. Per-chip totals: experiments/tpu_pod.md (python -m biomni_jax.tools.aot).
  rl.engine = ml_collections.ConfigDict(
      dict(
          num_slots=16,
          max_len=65_536,
          max_prefill_chunk=4_096,
          mesh=dict(data=1, tensor=4),
          release_during_train=True,
      )
  )
  rl.sandbox_workers = 64
  rl.get_groups_timeout_s = 0.0
  rl.save_every = 5
  rl.keep_checkpoints = 3
  rl.async_checkpoint = True
  rl.tensorboard = True
  rl.progress_bar = True

  c.optimizer = default_optimizer_config()  # lr 1e-6 constant, AdamW (0.9, 0.999), wd 0.01, clip 1
  c.optimizer.lr = 1e-6
  c.aot.topology = "v5p:2x4x4"
  return c
