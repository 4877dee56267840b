"""tools/export_hf: a training run's checkpoint -> a Hugging Face directory transformers loads with equal logits."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from biomni_jax import model as M
from biomni_jax.data.chat import ChatRenderer
from biomni_jax.model.safetensors_io import SafetensorsFile
from biomni_jax.tools import export_hf
from biomni_jax.train.checkpoint import Checkpointer
from biomni_jax.train.optimizer import make_optimizer
from biomni_jax.train.sft import train_sft
from biomni_jax.train.step import abstract_train_state
from tests.train.sft_fixtures import fast_config, write_conversations

REPO = pathlib.Path(__file__).resolve().parents[2]
IDS = [[5, 17, 300, 41, 2, 99, 260, 7, 488, 12, 33, 401]]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  """A 2-step SFT run of the demo config on the tiny preset, checkpoints at steps 1 and 2."""
  root = tmp_path_factory.mktemp("export")
  train = write_conversations(root / "train.jsonl", 8)
  config = fast_config(
      train,
      **{
          "sft.num_steps": 2,
          "sft.save_every": 1,
          "sft.tensorboard": False,
          "sft.async_checkpoint": False,
          "optimizer.warmup_steps": 1,
      },
  )
  summary = train_sft(config, str(root / "run"))
  return root, str(root / "run"), summary


def torch_logits(path, ids, dtype=torch.float32):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
  with torch.no_grad():
    return model(torch.as_tensor(ids)).logits.float().numpy()


def test_exported_directory_gives_transformers_the_trained_models_logits(sft_run):
  root, run, summary = sft_run
  out = root / "hf_latest"
  result = export_hf.export_run(run, str(out))
  assert result["step"] == 2
  assert sorted(os.listdir(out)) == sorted(
      [
          "config.json",
          "model.safetensors",
          "generation_config.json",
          "tokenizer.json",
          "tokenizer_config.json",
          "chat_template.jinja",
      ]
  )
  ours = np.asarray(M.forward(summary["model_config"], summary["state"].params, jnp.asarray(IDS)))
  np.testing.assert_allclose(torch_logits(str(out), IDS), ours, atol=1e-4, rtol=1e-4)
  # Nothing is left behind beside the output.
  assert not [p for p in os.listdir(root) if p.startswith(".tmp")]


def test_exported_tokenizer_and_generation_config_stop_at_im_end(sft_run):
  root, run, summary = sft_run
  out = root / "hf_tok"
  export_hf.export_run(run, str(out))
  theirs = transformers.AutoTokenizer.from_pretrained(str(out))
  ours = summary["tokenizer"]
  messages = [
      {"role": "system", "content": "Use <execute> for code."},
      {"role": "user", "content": "Which gene? BRCA1, TP53"},
      {"role": "assistant", "content": "<think>\nrank\n</think>\n<execute>print(1)</execute>"},
      {"role": "user", "content": "<observation>TP53</observation>"},
  ]
  expected = ChatRenderer(ours).prompt_ids(messages).tolist()
  text = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
  assert theirs.encode(text, add_special_tokens=False) == expected
  im_end = ours.convert_tokens_to_ids("<|im_end|>")
  generation = json.loads((out / "generation_config.json").read_text())
  assert generation["eos_token_id"][0] == im_end and generation["temperature"] == 0.6
  assert generation["top_p"] == 0.95
  assert transformers.AutoConfig.from_pretrained(str(out)).eos_token_id == im_end


def test_step_flag_exports_that_step_and_bfloat16_stays_close(sft_run):
  root, run, summary = sft_run
  out = root / "hf_step1"
  export_hf.export_run(run, str(out), step=1, dtype="bfloat16")
  cfg = summary["model_config"]
  optimizer = make_optimizer(
      dict(
          ml_collections.ConfigDict(
              json.loads((pathlib.Path(run) / "config.json").read_text())
          ).optimizer,
          total_steps=2,
      )
  )
  from biomni_jax.sharding import ShardingRules, make_mesh

  rules = ShardingRules(make_mesh(fsdp=-1))
  with Checkpointer(os.path.join(run, "checkpoints"), async_save=False) as ckpt:
    step1, _ = ckpt.restore(abstract_train_state(cfg, optimizer, rules), step=1)
  at_step1 = np.asarray(M.forward(cfg, step1.params, jnp.asarray(IDS)))
  at_step2 = np.asarray(M.forward(cfg, summary["state"].params, jnp.asarray(IDS)))
  exported = torch_logits(str(out), IDS, dtype=torch.bfloat16)
  bf16_error = np.abs(exported - at_step1).max()
  assert bf16_error < 0.05 * np.abs(at_step1).max()
  assert (
      bf16_error < np.abs(at_step2 - at_step1).max()
  )  # it is step 1 that was exported, not step 2
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_rl_workdir_exports_its_own_params_with_the_sft_runs_model_and_tokenizer(sft_run, tmp_path):
  """An RL run started from an SFT run keeps no tokenizer of its own: both come from rl.init_from_sft."""
  _, run, summary = sft_run
  cfg = summary["model_config"]
  rl_dir = tmp_path / "rl"
  rl_dir.mkdir()
  config = ml_collections.ConfigDict(
      {
          "mode": "rl",
          "rl": {"init_from_sft": run},
          "model": {"preset": "tiny"},
          "tokenizer": {"path": ""},
      }
  )
  (rl_dir / "config.json").write_text(config.to_json())
  optimizer = make_optimizer(dict(fast_config("x").optimizer, total_steps=4))
  state = summary["state"]
  rl_params = jax.tree.map(lambda x: x * 1.5 + 0.01, state.params)
  with Checkpointer(rl_dir / "checkpoints", async_save=False) as ckpt:
    ckpt.save(
        7, state.replace(params=rl_params, opt_state=optimizer.init(rl_params)), {"version": 7}
    )
  out = tmp_path / "hf_rl"
  assert export_hf.export_run(str(rl_dir), str(out))["step"] == 7
  stored = SafetensorsFile(str(out / "model.safetensors"))
  np.testing.assert_array_equal(
      stored.get("model.norm.weight"), np.asarray(rl_params["norm"]["scale"])
  )
  np.testing.assert_array_equal(
      stored.get("model.layers.1.mlp.up_proj.weight"),
      np.asarray(rl_params["layers"]["mlp"]["up_proj"]["kernel"][1]).T,
  )
  assert (out / "tokenizer.json").read_bytes() == (
      pathlib.Path(run) / "tokenizer" / "tokenizer.json"
  ).read_bytes()
  assert cfg.vocab_size == json.loads((out / "config.json").read_text())["vocab_size"]


def test_bad_inputs_name_the_path_and_write_nothing(sft_run, tmp_path):
  _, run, _ = sft_run
  out = tmp_path / "out"
  cases = [
      (tmp_path / "missing", "does not exist"),
      (tmp_path, "config.json is missing"),
  ]
  for workdir, message in cases:
    with pytest.raises(export_hf.ExportError, match=message):
      export_hf.export_run(str(workdir), str(out))
  no_ckpt = tmp_path / "untrained"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text((pathlib.Path(run) / "config.json").read_text())
  (no_ckpt / "tokenizer").symlink_to(pathlib.Path(run) / "tokenizer")
  with pytest.raises(export_hf.ExportError, match="no checkpoint in .*untrained/checkpoints"):
    export_hf.export_run(str(no_ckpt), str(out))
  assert not (no_ckpt / "checkpoints").exists()  # looking did not create it
  with pytest.raises(
      export_hf.ExportError, match=r"no checkpoint at step 9 .*committed steps: \[1, 2\]"
  ):
    export_hf.export_run(run, str(out), step=9)
  with pytest.raises(export_hf.ExportError, match="expected <workdir>/checkpoints"):
    export_hf.split_checkpoint_path(str(tmp_path / "elsewhere" / "3"))
  assert export_hf.split_checkpoint_path(run + "/checkpoints/2") == (run, 2)
  assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]

  occupied = tmp_path / "occupied"
  occupied.mkdir()
  (occupied / "keep.txt").write_text("mine")
  with pytest.raises(export_hf.ExportError, match="exists and is not empty; pass --overwrite"):
    export_hf.export_run(run, str(occupied))
  assert os.listdir(occupied) == ["keep.txt"]


def test_command_line_exit_status_and_message(sft_run, tmp_path):
  _, run, _ = sft_run
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  bad = subprocess.run(
      [
          sys.executable,
          "-m",
          "biomni_jax.tools.export_hf",
          f"--checkpoint={run}/checkpoints/5",
          f"--out={tmp_path / 'x'}",
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )
  assert bad.returncode == 2
  assert "error: no checkpoint at step 5" in bad.stderr and "committed steps: [1, 2]" in bad.stderr
  assert not (tmp_path / "x").exists()
  good = subprocess.run(
      [
          sys.executable,
          "-m",
          "biomni_jax.tools.export_hf",
          f"--checkpoint={run}/checkpoints",
          "--step=1",
          f"--out={tmp_path / 'y'}",
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
      timeout=120,
  )
  assert good.returncode == 0, good.stderr[-2000:]
  assert json.loads(good.stdout.split("EXPORTED ", 1)[1])["step"] == 1
  assert (tmp_path / "y" / "model.safetensors").exists()
