"""ModelConfig's parameter and FLOP counts: against the initialised model and a hand-computed case."""

import pytest

from biomni_jax import model as M


@pytest.mark.parametrize("tied", [True, False])
def test_num_params_counts_the_initialised_params(tied):
  # vocab_size 512 is a multiple of vocab_multiple 128, so the embedding holds no padding rows.
  config = M.get_preset("tiny", tie_word_embeddings=tied)
  assert config.num_params() == M.num_params(M.abstract_params(config))


def test_flops_per_token_hand_computed():
  config = M.ModelConfig(
      vocab_size=10,
      hidden_size=4,
      intermediate_size=6,
      num_hidden_layers=3,
      num_attention_heads=2,
      num_key_value_heads=1,
      head_dim=2,
  )
  # matmul weights per layer: q 4x4 + k, v 2 x 4x2 + o 4x4 + MLP 3 x 4x6 = 16 + 16 + 16 + 72 = 120
  assert config.layer_matmul_params() == 120
  # 2 x (3 layers x 120 + LM head 10 x 4) = 800; attention 2 x 2 x 3 x (H D = 4) x 8 / 2 = 192
  assert config.flops_per_token(8) == 800 + 192
