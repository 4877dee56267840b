"""Greedy evaluation episodes of a tiny random model on several sampler meshes: prints them as JSON.

Run by tests/eval/test_eval_meshes.py with 4 simulated CPU devices, one process for every mesh (the
tokenizer, tasks and model are built once):
    python tests/eval/eval_mesh_check.py --meshes=1x1,2x1,1x2 --workdir=W
prints {"1x1": [[instance_id, sample_index, messages], ...], "2x1": ..., ...}, a mesh named data x tensor.
"""

import argparse
import json
import os


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--meshes", default="1x1,2x1,1x2", help="data x tensor sampler meshes")
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax

  from biomni_jax import model as M
  from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
  from biomni_jax.eval import harness
  from biomni_jax.eval.agents import ModelAgent
  from biomni_jax.eval.tasks import load_embedded

  tokenizer = train_embedded_tokenizer(default_corpus(), 600, os.path.join(args.workdir, "tok"))
  config = M.get_preset("tiny", vocab_size=len(tokenizer), num_hidden_layers=2)
  params = M.init_params(config, jax.random.key(0))
  agent = ModelAgent(config, params, tokenizer, source="random")
  instances, environments = load_embedded(["sequence_qa", "locus_causal_gene"], "val", 2)
  episodes = {}
  for mesh in args.meshes.split(","):
    data, tensor = (int(size) for size in mesh.split("x"))
    settings = harness.ModelEvalSettings(
        temperature=0.0,
        max_turns=2,
        max_new_tokens_per_turn=24,
        max_context_tokens=1024,
        num_slots=4,
        max_len=1200,
        max_prefill_chunk=128,
        sandbox_workers=1,
        mesh_data=data,
        mesh_tensor=tensor,
    )
    records = harness.run_model(agent, instances, environments, 2, settings)
    episodes[mesh] = [[r.instance_id, r.sample_index, r.messages] for r in records]
  print(json.dumps(episodes))


if __name__ == "__main__":
  main()
