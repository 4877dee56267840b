"""biomni_jax/cli.py: flags on their own FlagValues, one-line errors of the program's type, help text."""

import pytest
from absl import flags

from biomni_jax import cli


class BadCommandLine(ValueError):
  pass


def define_flags(fv):
  flags.DEFINE_integer("count", 3, "how many", lower_bound=1, flag_values=fv)


def test_parse_flags_reads_values_without_touching_the_global_flags():
  fv = cli.parse_flags("prog", ["--count=5"], define_flags, BadCommandLine)
  assert fv.count == 5
  assert "count" not in flags.FLAGS


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--colour=red"], "Unknown command line flag 'colour'"),
        (["--count=0"], "flag --count=0: 0 is not a positive integer"),
        (["--count=2", "extra"], "unexpected positional arguments ['extra']"),
    ],
)
def test_parse_flags_raises_the_programs_error_in_one_line(argv, message):
  with pytest.raises(BadCommandLine) as e:
    cli.parse_flags("prog", argv, define_flags, BadCommandLine)
  assert "\n" not in str(e.value)
  assert str(e.value).startswith(message)


def test_help():
  assert cli.asks_for_help(["--count=2", "-h"]) and not cli.asks_for_help(["--count=2"])
  text = cli.help_text("prog: does things", define_flags)
  assert text.startswith("prog: does things\nflags:\n")
  assert "--count: how many" in text
