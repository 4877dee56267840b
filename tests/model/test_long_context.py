"""Memory of forward + backward grows linearly with sequence length (blockwise attention, chunked logits)."""

import pytest

from benchmarks.long_context_memory import compiled_step, long_context_config, peak_bytes


def test_compiled_peak_memory_is_linear_in_length():
  config = long_context_config()
  peaks = [peak_bytes(compiled_step(config, n)[1]) for n in (2048, 4096, 8192)]
  # Linear: doubling the length at most ~doubles memory (quadratic attention would give ~4x).
  assert peaks[1] / peaks[0] < 2.3 and peaks[2] / peaks[1] < 2.3, peaks
  dense = peak_bytes(compiled_step(long_context_config(dense=True), 8192)[1])
  assert dense > 4 * peaks[2], (dense, peaks[2])


@pytest.mark.slow
def test_forward_backward_on_65536_tokens_runs():
  import jax
  import numpy as np
  from biomni_jax import model as M

  config = long_context_config()
  step, _ = compiled_step(config, 65_536)
  params = M.init_params(config, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (1, 65_536), 0, config.vocab_size)
  loss, grads = step(params, tokens)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
