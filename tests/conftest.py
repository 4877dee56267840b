"""Shared fixtures. JAX runs on the CPU; the multi-device tests start their own subprocesses."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EVAL1_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "eval1_sample" / "eval1_sample_50.jsonl"


@pytest.fixture
def eval1_sample_path():
  if not EVAL1_SAMPLE.exists():
    pytest.skip(f"Eval1 sample not found at {EVAL1_SAMPLE}")
  return EVAL1_SAMPLE
