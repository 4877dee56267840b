"""config_utils.parse_overrides: a script's --set key=value strings as load_config_file overrides."""

import pytest

from biomni_jax.config_utils import ConfigError, parse_overrides


def test_values_are_python_literals_when_they_parse_else_strings():
  got = parse_overrides(
      ["a.b=3", "c=[[32, 500], [64, 50]]", "d=train", "e='quoted'", "f=x=y", "g=", "h=1e-3"]
  )
  assert got == {
      "a.b": 3,
      "c": [[32, 500], [64, 50]],
      "d": "train",
      "e": "quoted",
      "f": "x=y",
      "g": "",
      "h": 1e-3,
  }


@pytest.mark.parametrize("item", ["no_equals", "=3"])
def test_an_item_without_a_key_and_value_is_named(item):
  with pytest.raises(ConfigError, match=f"config override {item!r}: expected key=value"):
    parse_overrides([item])
