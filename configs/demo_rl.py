"""The embedded default, phase two: multi-turn RL of the demo SFT model on the embedded tasks, on a CPU.

    python -m biomni_jax.main --config=configs/demo_rl.py --workdir=/tmp/demo_rl \
        --config.rl.init_from_sft=/tmp/demo          # the workdir of a configs/demo.py SFT run

The model, tokenizer and weights come from the SFT run's workdir (its config.json, tokenizer/ and newest
checkpoint); `model` and `tokenizer` below are used only when rl.init_from_sft is "" (a random tiny model,
for tests). Knobs follow the Biomni-R0 recipe (Dr.GRPO, PPO clip 0.2/0.28, dual-clip 3, no KL/entropy,
seq-mean-token-mean, AdamW wd 0.01, grad clip 1) at CPU scale: 4 tasks x 4 samples per rollout batch,
2 optimizer steps per batch, short episodes, and a larger constant learning rate than the 8B recipe's 1e-6.
"""

import ml_collections

from biomni_jax.train.optimizer import default_optimizer_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "rl"
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.preset = "tiny"
  config.model.overrides = ml_collections.ConfigDict(
      dict(
          hidden_size=128,
          intermediate_size=384,
          num_hidden_layers=4,
          num_attention_heads=4,
          num_key_value_heads=2,
          head_dim=32,
          dtype="float32",
          remat_policy="none",
          tie_word_embeddings=True,
          attention_block_q=128,
          attention_block_kv=128,
          logits_chunk=256,
      )
  )
  config.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=2048))

  rl = config.rl = ml_collections.ConfigDict()
  rl.init_from_sft = (
      ""  # an SFT run's workdir (configs/demo.py); "" = random init from config.model
  )
  rl.task_families = [
      "sequence_qa",
      "locus_causal_gene",
      "rare_disease_diagnosis",
      "patient_gene_detection",
  ]
  rl.tasks_per_family = 16
  rl.task_split = "train"
  rl.task_seed = 0
  rl.task_start = 0  # index of the first instance of each family (the pipeline skips SFT's tasks)
  rl.epochs = 1
  rl.num_steps = 0  # > 0 overrides epochs x tasks / num_groups
  rl.num_groups = 4  # task instances (prompts) per rollout batch
  rl.group_size = 4  # G trajectories per task
  rl.num_minibatches = 2  # optimizer steps per rollout batch
  rl.micro_batches = 1
  rl.seq_len = 2048  # training row length (>= the longest trajectory: max_context + new tokens)
  rl.pack = True
  rl.rows_multiple_of = 1
  rl.logprob_batch_rows = 4
  rl.advantage_estimator = "drgrpo"
  rl.temperature = 0.6
  rl.loss = ml_collections.ConfigDict(
      dict(
          policy_loss="ppo_clip",
          clip_low=0.2,
          clip_high=0.28,
          dual_clip=3.0,
          tis_cap=None,
          kl_coef=0.0,
          kl_estimator="k3",
          entropy_coef=0.0,
          aggregation="seq-mean-token-mean",
          token_sum_norm=None,
      )
  )
  rl.rollout = ml_collections.ConfigDict(
      dict(
          max_turns=6,
          max_context_tokens=1536,
          max_new_tokens_per_turn=256,
          top_p=0.95,
          top_k=0,
          max_staleness=0,
          max_concurrent_episodes=16,
          tool_timeout_s=30.0,
          overlong_threshold=1536,
          # The demo SFT data has no system prompt: its tool listing (~1.1k tokens) would fill the tiny
          # model's context. The task prompt alone is what the demo model was trained to follow.
          use_system_prompt=False,
      )
  )
  # The sampler of each host: `mesh` = data replicas x tensor-parallel devices of the host's own devices
  # (sampling/layout.py; -1 = the rest of them). One device here; the 8B/32B recipes use tensor=4.
  rl.engine = ml_collections.ConfigDict(
      dict(num_slots=16, max_len=2048, max_prefill_chunk=256, mesh=dict(data=1, tensor=1))
  )
  rl.sandbox_workers = 2
  rl.get_groups_timeout_s = 0.0  # 0 = wait as long as it takes
  rl.save_every = 2
  rl.keep_checkpoints = 2
  rl.async_checkpoint = True
  rl.tensorboard = True
  rl.progress_bar = True

  config.optimizer = default_optimizer_config()  # AdamW (0.9, 0.999), wd 0.01, clip 1.0, constant
  config.optimizer.lr = 2e-5

  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
  return config
