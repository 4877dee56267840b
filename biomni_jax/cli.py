"""Command-line programs whose absl flags live on their own FlagValues, so that importing a program's
module defines no global flag (python -m biomni_jax.eval, python -m biomni_jax.data.rejection_sampling).

A program has a `define_flags(fv)` that defines its flags on `fv`; these helpers print its help and parse
its command line, turning every flag error into one line of the program's own exception type.
"""

from __future__ import annotations

from typing import Callable, Sequence

from absl import flags

HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")
DefineFlags = Callable[[flags.FlagValues], None]


def asks_for_help(argv: Sequence[str]) -> bool:
  """Whether the arguments (without the program name) hold a help flag."""
  return any(a in HELP_FLAGS for a in argv)


def help_text(doc: str, define_flags: DefineFlags) -> str:
  """The program's docstring followed by its flags' help."""
  fv = flags.FlagValues()
  define_flags(fv)
  return f"{doc}\nflags:\n{fv.get_help(include_special_flags=False)}"


def parse_flags(
    program: str, argv: Sequence[str], define_flags: DefineFlags, error: type[Exception]
) -> flags.FlagValues:
  """The flags of `argv` (without the program name) parsed on a new FlagValues. A malformed or unknown
  flag, or a positional argument, raises `error` with a one-line message naming it."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    rest = fv([program, *argv])
  except flags.Error as e:
    raise error(" ".join(str(e).split())) from None
  if len(rest) > 1:
    raise error(f"unexpected positional arguments {rest[1:]}")
  return fv
