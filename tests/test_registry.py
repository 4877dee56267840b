"""The registry helper: decorator registration, lookups, errors naming the known names, and the
registries built on it reading their names from where the implementations are defined."""

import pytest

from biomni_jax.registry import Registry, UnknownNameError


def test_register_lookup_and_unknown_names():
  shapes = Registry("shape")

  @shapes.register("square")
  def square(x):
    return x * x

  shapes.add("cube", lambda x: x**3)
  assert shapes["square"] is square and shapes["cube"](2) == 8
  assert list(shapes) == ["square", "cube"] and len(shapes) == 2  # registration order
  assert "square" in shapes and "circle" not in shapes and shapes.get("circle") is None
  assert shapes.names() == ["cube", "square"]
  with pytest.raises(UnknownNameError) as error:
    shapes["circle"]
  assert str(error.value) == "unknown shape 'circle'; expected one of ['cube', 'square']"
  assert isinstance(error.value, KeyError) and isinstance(error.value, ValueError)
  with pytest.raises(ValueError, match="'square' is registered twice"):
    shapes.add("square", square)
  with pytest.raises(ValueError, match="expected a non-empty name"):
    shapes.register("")(square)


def test_config_choices_and_metric_keys_come_from_the_defining_modules():
  from biomni_jax.config_utils import ConfigError
  from biomni_jax.train import advantages, aggregation, losses, rl

  assert tuple(advantages.ADVANTAGES) == ("grpo", "drgrpo", "rloo")
  assert tuple(aggregation.AGGREGATIONS) == (
      "token-mean",
      "seq-mean-token-mean",
      "seq-mean-token-sum-norm",
  )
  assert tuple(losses.POLICY_LOSSES) == ("ppo_clip", "importance_sampling")
  assert tuple(losses.KL_ESTIMATORS) == ("k1", "k2", "k3")
  config = {"rl": {"num_groups": 2, "group_size": 2, "seq_len": 64, "temperature": 1.0}}
  config["rl"]["advantage_estimator"] = "ppo"
  with pytest.raises(ConfigError, match=r"expected one of \('grpo', 'drgrpo', 'rloo'\)"):
    rl.RLSettings.from_config(config)
