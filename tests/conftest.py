"""Shared fixtures. JAX runs on the CPU; the multi-device tests start their own subprocesses."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def eval1_sample_path():
  """The 50 real Eval1 rows shipped with the package (biomni_jax/env/data/)."""
  from biomni_jax.env.eval1 import sample_path

  return sample_path()
