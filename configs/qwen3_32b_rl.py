"""Biomni-R0 phase 2 for Qwen3-32B: multi-turn GRPO-family RL from the SFT checkpoint.

Recipe (docs/recipe.md section 1.2): Dr.GRPO (A = R - group mean), G = 8 trajectories per task, 64 tasks per
rollout batch, 8 optimizer steps per rollout batch (mini-batches of 64 trajectories), lr 1e-6 constant,
AdamW (0.9, 0.999) wd 0.01, grad clip 1.0, PPO clip 0.2 / 0.28 with dual-clip 3, no KL or entropy term,
seq-mean-token-mean; sampling temperature 0.6, top_p 0.95; at most 48 turns, 49,152 context tokens per
engine call and 4,096 new tokens per turn; 53,248 positions (YaRN factor 2 over 32,768 allows 65,536); 2 epochs.
Trajectories over 32,768 tokens that fail the format check are dropped from the loss.
Layout of the train step: v5p-128 (64 chips), 16-way FSDP x 4-way context parallelism; each mini-batch of
64 trajectories is packed into rows of 53,248 tokens and run as 4 micro-batches, one row per FSDP group
each (77.9 of 95 GiB per chip ahead of time; 2 micro-batches of 2 rows per group peak at 113.6 GiB).

  python -m biomni_jax.main --config=configs/qwen3_32b_rl.py --workdir=gs://.../rl32b \
      --config.rl.init_from_sft=gs://.../sft32b
  python -m biomni_jax.tools.aot --config=configs/qwen3_32b_rl.py --topology=v5p:4x4x4
"""

from biomni_jax.config_utils import sibling_config


def get_config():
  c = sibling_config(__file__, "qwen3_8b_rl.py")  # the shared recipe; only what differs follows
  c.model.preset = "qwen3_32b"
  rl = c.rl
  rl.init_from_sft = ""  # the SFT run's workdir (configs/qwen3_32b_sft.py)
  rl.num_groups = 64
  rl.micro_batches = 4
  rl.seq_len = 53_248
  rl.rows_multiple_of = 64  # 16 FSDP groups x 4 micro-batches
  rl.rollout.max_turns = 48
  rl.rollout.max_context_tokens = 49_152
  rl.rollout.max_concurrent_episodes = 512
  rl.engine.max_len = 53_248
  # 32B weights take 15.3 GiB per chip (tensor=4); the KV cache gets what is left.
  rl.engine.num_slots = 8
  rl.sandbox_workers = 128
  c.mesh.fsdp = 16
  c.mesh.sequence = 4
  c.aot.topology = "v5p:4x4x4"
  return c
