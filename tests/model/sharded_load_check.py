"""Script (8 simulated CPU devices): load a HF checkpoint straight into a sharding; compare with a plain load.

Prints RESULT {...} with the largest difference and how many parameters ended up sharded.
"""

import json
import sys

import jax
import numpy as np

from biomni_jax import model as M
from biomni_jax.model import hf_io
from biomni_jax.sharding import ShardingRules, make_mesh


def main(path):
  config, plain = hf_io.load_hf_checkpoint(path)
  rules = ShardingRules(make_mesh(data=2, fsdp=2, tensor=2))
  _, sharded = hf_io.load_hf_checkpoint(path, sharding=rules)
  expected = M.param_shardings(config, rules)
  max_diff = max(
      float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
      for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded))
  )
  placed = all(
      x.sharding.is_equivalent_to(s, x.ndim)
      for x, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(expected))
  )
  n_sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (4, 16)).astype(np.int32)
  logits_diff = float(
      np.max(
          np.abs(
              np.asarray(M.forward(config, plain, tokens))
              - np.asarray(M.forward(config, sharded, tokens, sharding=rules))
          )
      )
  )
  print(
      "RESULT "
      + json.dumps(
          dict(max_diff=max_diff, placed=placed, n_sharded=n_sharded, logits_diff=logits_diff)
      )
  )


if __name__ == "__main__":
  main(sys.argv[1])
