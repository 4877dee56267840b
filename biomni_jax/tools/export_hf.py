"""Export a training run's params to a Hugging Face Qwen3 directory that transformers and vLLM load.

    python -m biomni_jax.tools.export_hf --workdir=DIR [--step=N] --out=HF_DIR [--dtype=bfloat16] [--overwrite]
    python -m biomni_jax.tools.export_hf --checkpoint=DIR/checkpoints[/N] --out=HF_DIR

HF_DIR receives config.json, model.safetensors (sharded with an index above 4 GiB), the tokenizer files
(with its chat template) and generation_config.json (eos = `<|im_end|>`, the recipe's sampling: temperature
0.6, top_p 0.95). It is assembled in a hidden sibling directory and renamed into place at the end, so a
failure leaves no half-written HF_DIR.

How a workdir is read (the layout `train/sft.py` and `train/rl.py` write):
  DIR/config.json        the run's config; `mode` says which loop wrote it
  DIR/checkpoints/<N>/   orbax steps; only the `params` subtree of item `state` is restored (no optimizer
                         state is materialized, so a 32B export needs the params' memory only)
  model config           config.model (preset + overrides, vocab sized to an embedded tokenizer), or the
                         config.json of the HF directory `model.init_from`, or, for an RL run started from an
                         SFT run (`rl.init_from_sft`), whatever that SFT workdir resolves to
  tokenizer              `tokenizer.path`, else DIR/tokenizer (the embedded one), else the SFT run's

Bad input (no workdir, no config.json, no checkpoint, unknown step, an existing non-empty HF_DIR without
--overwrite) ends with one line on stderr naming the path and what to do, and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Optional

from absl import app, flags, logging

EXIT_BAD_INPUT = 2
GENERATION_DEFAULTS = {"temperature": 0.6, "top_p": 0.95}  # sampling: docs/recipe.md section 1.2
DTYPES = ("float32", "bfloat16")
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"  # train/sft.py and train/rl.py both use it
TOKENIZER_DIR = "tokenizer"


class ExportError(ValueError):
  """A workdir, checkpoint or output path that cannot be exported from/to; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Where a run's pieces live. model_config: biomni_jax ModelConfig; config: the run's ConfigDict."""

  workdir: str
  config: Any
  model_config: Any
  tokenizer_dir: str
  checkpoint_dir: str


# ------------------------------------------------------------------------------------------ reading a run


def _read_config(workdir: str):
  import ml_collections

  if not os.path.isdir(workdir):
    raise ExportError(
        f"workdir {workdir!r} does not exist (expected the --workdir of a biomni_jax.main run)"
    )
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ExportError(
        f"{path} is missing: {workdir!r} is not a training run's workdir (runs write it at start)"
    )
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ExportError(f"{path}: cannot be read as a run config: {e}") from None


def _tokenizer_dir(config, workdir: str) -> str:
  from biomni_jax.config_utils import field

  own = field(config, "tokenizer.path", str, default="")
  path = own or os.path.join(workdir, TOKENIZER_DIR)
  if not os.path.isdir(path):
    where = "config field 'tokenizer.path'" if own else "the run's embedded tokenizer"
    raise ExportError(f"{where}: tokenizer directory {path!r} does not exist")
  return path


def _model_config(config, tokenizer_dir: str, has_own_tokenizer: bool):
  """The ModelConfig the run trained: from model.init_from's config.json if set, else preset + overrides."""
  from biomni_jax.config_utils import field, model_config
  from biomni_jax.model.hf_io import config_from_hf

  init_from = field(config, "model.init_from", str, default="")
  overrides = dict(field(config, "model.overrides", default={}) or {})
  if init_from:
    path = os.path.join(init_from, CONFIG_FILE)
    if not os.path.isfile(path):
      raise ExportError(
          f"config field 'model.init_from': {path} is missing (the run's initial HF checkpoint "
          f"defines its model config)"
      )
    with open(path) as f:
      return config_from_hf(json.load(f), source=path, **overrides)
  vocab_size = None
  if not has_own_tokenizer:
    from biomni_jax.data.tokenizer import load_tokenizer

    vocab_size = len(load_tokenizer(tokenizer_dir))
  return model_config(config, vocab_size=vocab_size)


def describe_run(workdir: str) -> RunSpec:
  """Resolves a workdir into its config, model config, tokenizer directory and checkpoint directory."""
  from biomni_jax.config_utils import ConfigError, field

  workdir = os.path.abspath(workdir)
  config = _read_config(workdir)
  checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
  try:
    sft_dir = (
        field(config, "rl.init_from_sft", str, default="")
        if field(config, "mode", str, default="") == "rl"
        else ""
    )
    if sft_dir:  # an RL run takes model and tokenizer from its SFT run
      parent = describe_run(sft_dir)
      return RunSpec(workdir, config, parent.model_config, parent.tokenizer_dir, checkpoint_dir)
    tokenizer_dir = _tokenizer_dir(config, workdir)
    has_own = bool(field(config, "tokenizer.path", str, default=""))
    return RunSpec(
        workdir,
        config,
        _model_config(config, tokenizer_dir, has_own),
        tokenizer_dir,
        checkpoint_dir,
    )
  except ConfigError as e:
    raise ExportError(f"{os.path.join(workdir, CONFIG_FILE)}: {e}") from None


def committed_steps(checkpoint_dir: str) -> list[int]:
  """Committed checkpoint steps under `checkpoint_dir`, ascending; never creates the directory."""
  if not os.path.isdir(checkpoint_dir):
    return []
  from biomni_jax.train.checkpoint import Checkpointer

  with Checkpointer(checkpoint_dir, async_save=False) as ckpt:
    return ckpt.all_steps()


def resolve_step(spec: RunSpec, step: Optional[int]) -> int:
  steps = committed_steps(spec.checkpoint_dir)
  if not steps:
    raise ExportError(
        f"no checkpoint in {spec.checkpoint_dir}: the run has not saved a step yet (train it "
        f"with python -m biomni_jax.main --workdir={spec.workdir} ...)"
    )
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ExportError(
        f"no checkpoint at step {step} in {spec.checkpoint_dir}; committed steps: {steps}"
    )
  return step


def restore_params(spec: RunSpec, step: int, sharding=None):
  """The `params` subtree of checkpoint `step`, float32 arrays in `sharding` (default: fsdp over all devices).

  A partial orbax restore: the optimizer state stored beside the params is never read.
  """
  import jax
  import orbax.checkpoint as ocp
  from etils import epath

  from biomni_jax import model as M
  from biomni_jax.sharding import ShardingRules, make_mesh
  from biomni_jax.train.checkpoint import STATE_ITEM, describe_mismatch

  sharding = sharding or ShardingRules(make_mesh(fsdp=-1))
  target = {"params": M.abstract_params(spec.model_config, sharding)}
  item_dir = os.path.join(spec.checkpoint_dir, str(step), STATE_ITEM)
  stored = ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir))
  stored = getattr(stored, "tree", stored)
  if not isinstance(stored, dict) or "params" not in stored:
    raise ExportError(
        f"{item_dir}: expected a train state with a 'params' subtree, found "
        f"{sorted(stored) if isinstance(stored, dict) else type(stored).__name__}"
    )
  problems = describe_mismatch(_shape_table(stored["params"]), _shape_table(target["params"]))
  if problems:
    raise ExportError(
        f"{item_dir}: params differ from the model config the run resolves to: "
        + "; ".join(problems)
    )
  restored = ocp.PyTreeCheckpointer().restore(
      item_dir,
      args=ocp.args.PyTreeRestore(
          item=target,
          partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      ),
  )
  return restored["params"]


def _shape_table(tree) -> dict[str, tuple[tuple, str]]:
  import jax
  import numpy as np

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
      "/".join(str(getattr(k, "key", k)) for k in path): (
          tuple(leaf.shape),
          str(np.dtype(leaf.dtype)),
      )
      for path, leaf in leaves
  }


def load_run(workdir: str, step: Optional[int] = None, sharding=None):
  """(ModelConfig, params, tokenizer, step) of a workdir's checkpoint (default: the newest)."""
  from biomni_jax.data.tokenizer import load_tokenizer

  spec = describe_run(workdir)
  step = resolve_step(spec, step)
  return (
      spec.model_config,
      restore_params(spec, step, sharding),
      load_tokenizer(spec.tokenizer_dir),
      step,
  )


def split_checkpoint_path(path: str) -> tuple[str, Optional[int]]:
  """`<workdir>/checkpoints` or `<workdir>/checkpoints/<N>` -> (workdir, N or None)."""
  path = os.path.abspath(path).rstrip("/")
  step = None
  if os.path.basename(path).isdigit():
    path, step = os.path.dirname(path), int(os.path.basename(path))
  if os.path.basename(path) != CHECKPOINT_DIR:
    raise ExportError(
        f"--checkpoint={path!r}: expected <workdir>/{CHECKPOINT_DIR} or "
        f"<workdir>/{CHECKPOINT_DIR}/<step> (the run's config.json sits in <workdir>)"
    )
  return os.path.dirname(path), step


# ------------------------------------------------------------------------------------------ writing


def generation_config(tokenizer, model_config) -> dict:
  """generation_config.json: stop at `<|im_end|>` (and `<|endoftext|>`), sample as the recipe does."""
  from biomni_jax.data.tokenizer import IM_END, PAD_TOKEN

  im_end, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
  return {
      "eos_token_id": [im_end, pad],
      "pad_token_id": pad,
      "do_sample": True,
      **GENERATION_DEFAULTS,
      "max_length": model_config.max_position_embeddings,
  }


def _check_out(out: str, overwrite: bool) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f"--out={out!r} exists and is not a directory")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ExportError(
        f"--out={out!r} exists and is not empty; pass --overwrite to replace it or pick a new path"
    )


def write_hf_directory(
    model_config, params, tokenizer, out: str, *, dtype: str = "float32", overwrite: bool = False
) -> None:
  """Writes the whole HF directory into a hidden sibling, then renames it to `out` (complete or absent)."""
  import jax
  import ml_dtypes
  import numpy as np

  from biomni_jax.data.tokenizer import IM_END, PAD_TOKEN
  from biomni_jax.model.hf_io import save_hf_checkpoint

  if dtype not in DTYPES:
    raise ExportError(f"--dtype: expected one of {DTYPES}, found {dtype!r}")
  out = os.path.abspath(out)
  _check_out(out, overwrite)
  np_dtype = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  staging = (
      tempfile.mkdtemp(prefix=".tmp_export_", dir=parent) if jax.process_index() == 0 else None
  )
  try:
    hf_dir = os.path.join(staging or tempfile.gettempdir(), "hf")
    save_hf_checkpoint(model_config, params, hf_dir, dtype=np_dtype)  # gathers on every process
    if jax.process_index() != 0:
      return
    config_path = os.path.join(hf_dir, CONFIG_FILE)
    with open(config_path) as f:
      hf_config = json.load(f)
    hf_config.update(
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    )
    with open(config_path, "w") as f:
      json.dump(hf_config, f, indent=2)
    tokenizer.save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
      json.dump(generation_config(tokenizer, model_config), f, indent=2)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(
        hf_dir, 0o777 & ~umask
    )  # mkdtemp made the staging area private; the result is an ordinary dir
    if os.path.isdir(out):
      shutil.rmtree(out)
    os.rename(hf_dir, out)
  finally:
    if staging is not None:
      shutil.rmtree(staging, ignore_errors=True)


def export_run(
    workdir: str,
    out: str,
    *,
    step: Optional[int] = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict:
  """Exports checkpoint `step` (default newest) of `workdir` to the HF directory `out`; returns a summary."""
  from biomni_jax.data.tokenizer import load_tokenizer

  if dtype not in DTYPES:
    raise ExportError(f"--dtype: expected one of {DTYPES}, found {dtype!r}")
  _check_out(os.path.abspath(out), overwrite)  # fail before the (possibly long) restore
  spec = describe_run(workdir)
  step = resolve_step(spec, step)
  tokenizer = load_tokenizer(spec.tokenizer_dir)
  params = restore_params(spec, step)
  write_hf_directory(spec.model_config, params, tokenizer, out, dtype=dtype, overwrite=overwrite)
  return {
      "workdir": spec.workdir,
      "step": step,
      "out": os.path.abspath(out),
      "dtype": dtype,
      "tokenizer": spec.tokenizer_dir,
  }


# ------------------------------------------------------------------------------------------ command line


def _define_flags() -> None:
  """Defined only when run as a program, so that importing this module (serve.py does) adds no flags."""
  flags.DEFINE_string(
      "workdir", None, "A training run's workdir (holds config.json, checkpoints/)."
  )
  flags.DEFINE_string("checkpoint", None, "Instead of --workdir: <workdir>/checkpoints[/<step>].")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest).")
  flags.DEFINE_string("out", None, "Output Hugging Face directory.")
  flags.DEFINE_enum("dtype", "float32", DTYPES, "Weight dtype in the safetensors.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out.")


def main(argv) -> int:
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every array it reads at INFO
  try:
    if len(argv) > 1:
      raise ExportError(f"unexpected positional arguments {argv[1:]}")
    if f.out is None:
      raise ExportError("--out is required (the Hugging Face directory to write)")
    if (f.workdir is None) == (f.checkpoint is None):
      raise ExportError(
          "give exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints[/<step>]"
      )
    workdir, step = f.workdir, f.step
    if f.checkpoint is not None:
      workdir, path_step = split_checkpoint_path(f.checkpoint)
      if path_step is not None and step is not None and path_step != step:
        raise ExportError(
            f"--step={step} contradicts --checkpoint={f.checkpoint!r} (step {path_step})"
        )
      step = path_step if path_step is not None else step
    summary = export_run(workdir, f.out, step=step, dtype=f.dtype, overwrite=f.overwrite)
  except ExportError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return EXIT_BAD_INPUT
  print("EXPORTED " + json.dumps(summary))
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
