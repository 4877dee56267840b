"""Biomni-R0 phase 1 for Qwen3-8B: full-parameter SFT on rejection-sampled teacher trajectories.

Recipe (docs/recipe.md section 1.1): ~834 trajectories (best of 8 teacher rollouts per training task),
4 epochs, batch 16, lr 1e-5, contexts to 65,536 tokens via YaRN factor 2 over 32,768.
Layout: v5p-32 (16 chips): 16-way FSDP, one 64k-token sequence per chip, splash attention, full remat.

  python -m biomni_jax.main --config=configs/qwen3_8b_sft.py --workdir=gs://.../sft8b \
      --config.model.init_from=/path/to/Qwen3-8B --config.tokenizer.path=/path/to/Qwen3-8B
  python -m biomni_jax.tools.aot --config=configs/qwen3_8b_sft.py --topology=v5p:2x2x4
"""

import ml_collections

from biomni_jax.train.optimizer import default_optimizer_config


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "sft"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "qwen3_8b"
  c.model.init_from = ""  # the Hugging Face Qwen3-8B directory (config.json + safetensors)
  c.model.overrides = ml_collections.ConfigDict(
      dict(
          dtype="bfloat16",
          remat_policy="full",
          attention_impl="auto",
          logits_chunk=2048,
          # YaRN: factor 2 over Qwen3's native 32,768 positions = 65,536.
          rope_scaling_factor=2.0,
          rope_original_max_position_embeddings=32_768,
          max_position_embeddings=65_536,
      )
  )

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # the Qwen3 tokenizer directory (usually the checkpoint directory)
  c.tokenizer.vocab_size = 151_936

  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""  # rejection-sampled trajectories: .jsonl or a tfds array_record directory
  c.data.train_split = "train"
  c.data.eval_path = ""
  c.data.eval_split = "val"

  c.sft = ml_collections.ConfigDict()
  c.sft.batch_size = 16  # packed rows per optimizer step
  c.sft.micro_batches = 1
  c.sft.seq_len = 65_536
  c.sft.pack = True
  c.sft.overlong = "truncate"
  c.sft.num_epochs = 4
  c.sft.num_steps = 0
  c.sft.loss_aggregation = "token-mean"
  c.sft.log_every = 1
  c.sft.eval_every = 50
  c.sft.save_every = 50
  c.sft.keep_checkpoints = 3
  c.sft.async_checkpoint = True
  c.sft.shuffle = True
  c.sft.tensorboard = True
  c.sft.progress_bar = True

  c.optimizer = default_optimizer_config()
  c.optimizer.lr = 1e-5
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 10
  c.optimizer.total_steps = 0  # 0 = the run's number of steps (~834 x 4 / 16 = 209 unpacked)
  c.optimizer.final_lr_fraction = 0.1
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip = 1.0

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  # Ahead-of-time compile target: python -m biomni_jax.tools.aot --config=<this file>
  c.aot = ml_collections.ConfigDict(dict(topology="v5p:2x2x4"))
  return c
