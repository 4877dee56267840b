"""Biomni-R0 phase 1 for Qwen3-32B: full-parameter SFT on rejection-sampled teacher trajectories.

Recipe (docs/recipe.md section 1.1): ~834 trajectories (best of 8 teacher rollouts per training task),
4 epochs, batch 16, lr 1e-5, contexts to 53,248 tokens (the 32B run capped total positions at 53,248).
Layout: v5p-128 (64 chips): 16-way FSDP x 4-way context parallelism (13,312 tokens per chip), full remat.

  python -m biomni_jax.main --config=configs/qwen3_32b_sft.py --workdir=gs://.../sft32b \
      --config.model.init_from=/path/to/Qwen3-32B --config.tokenizer.path=/path/to/Qwen3-32B
  python -m biomni_jax.tools.aot --config=configs/qwen3_32b_sft.py --topology=v5p:4x4x4
"""

from biomni_jax.config_utils import sibling_config


def get_config():
  c = sibling_config(__file__, "qwen3_8b_sft.py")  # the shared recipe; only what differs follows
  c.model.preset = "qwen3_32b"
  c.model.init_from = ""  # the Hugging Face Qwen3-32B directory
  c.sft.seq_len = 53_248
  c.mesh.fsdp = 16
  c.mesh.sequence = 4
  c.aot.topology = "v5p:4x4x4"
  return c
