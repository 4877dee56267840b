"""The embedded default, phase two: multi-turn RL of the demo SFT model on the embedded tasks, on a CPU.

    python -m biomni_jax.main --config=configs/demo_rl.py --workdir=/tmp/demo_rl \
        --config.rl.init_from_sft=/tmp/demo          # the workdir of a configs/demo.py SFT run

The RL stage of configs/demo.py's pipeline as a run of its own (its `rl` section, with `rl_optimizer` as the
optimizer); see configs/demo.py for the knobs (the Biomni-R0 recipe at CPU scale). The model, tokenizer and
weights come from the SFT run's workdir (its config.json, tokenizer/ and newest checkpoint); `model` and
`tokenizer` are used only when rl.init_from_sft is "" (a random tiny model, for tests).
"""

import ml_collections

from biomni_jax.config_utils import sibling_config


def get_config() -> ml_collections.ConfigDict:
  config = sibling_config(__file__, "demo.py")  # the pipeline's RL stage; only what differs follows
  config.mode = "rl"
  config.rl.task_start = (
      0  # index of the first instance of each family (the pipeline skips SFT's tasks)
  )
  config.rl.num_steps = 0  # > 0 overrides epochs x tasks / num_groups
  config.optimizer = config.rl_optimizer
  del config.model.init_from  # the model comes from rl.init_from_sft (or a random init)
  for section in ("data", "sft", "rl_optimizer", "pipeline", "eval"):  # the other stages'
    del config[section]
  return config
