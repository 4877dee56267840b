"""Decode throughput of the JAX engine against transformers `generate` and Tunix's sampler, and
session reuse across turns; every figure from interleaved repetitions (benchmarks/harness.py).

    python benchmarks/sampler.py                      # bench_100m, prompt 128, 128 new tokens
    python benchmarks/sampler.py --preset tiny --rope-theta 1e6 --new_tokens 16 --batches 1,8
    python benchmarks/sampler.py --results results.jsonl      # also append a JSON record

1. Decode at each batch size: one random Qwen3 (--preset, float32), saved with
   hf_io.save_hf_checkpoint and read by every peer: the engine (in this process), transformers
   (AutoModelForCausalLM in float32, torch.set_num_threads(2), in this process) and Tunix 0.1.7's
   `Sampler` (a worker in Tunix's own venv, benchmarks/tunix_env.py). Greedy, the same random
   prompts. Decode time = time(prompt + N new tokens) - time(prompt + 1 new token) on every side, so
   prefill is excluded; the same difference of process CPU time gives CPU seconds. A peer's units
   are batch x (N - 1) decoded tokens. Every row's N tokens must equal transformers' (printed per
   peer).
2. Sessions: S sessions x T turns with O-token observations, R-token replies: session reuse (each
   turn prefills only the new tokens) against re-prefilling the whole history every turn (a fresh
   one-turn session per turn). Units = tokens sampled; same tokens required.

Peers run interleaved with medians over --repetitions; a run during which other processes used the
CPU is flagged LOADED ("NOT A RESULT") and the exit status is 1 unless --allow-load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
import torch
import transformers

from benchmarks import harness, tunix_env
from biomni_jax import model as M
from biomni_jax.model import hf_io
from biomni_jax.sampling import Engine, SamplingParams


def random_prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).tolist()


def engine_generate(engine: Engine, prompts, new_tokens: int) -> list[list[int]]:
  sp = SamplingParams(temperature=0, max_new_tokens=new_tokens)
  futures = [engine.generate(p, sp) for p in prompts]
  return [list(f.result().token_ids) for f in futures]


def hf_generate(model, prompts, new_tokens: int) -> list[list[int]]:
  ids = torch.tensor(prompts)
  with torch.no_grad():
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
  return out[:, ids.shape[1] :].tolist()


def decode_peer(generate, prompts, new_tokens: int):
  """A harness peer: time(N new tokens) - time(1), wall and this process's CPU."""
  units = len(prompts) * (new_tokens - 1)

  def run() -> harness.Sample:
    long = harness.measure(lambda: generate(prompts, new_tokens))
    short = harness.measure(lambda: generate(prompts, 1))
    return long.minus(short, units)

  return run


def identity_report(run: harness.Run, reference: str) -> tuple[str, bool]:
  """Rows whose tokens equal the reference peer's in every repetition, per peer."""
  ref = run.samples[reference][0].output
  parts, all_same = [], True
  for peer in run.peers:
    if peer == reference:
      continue
    same = [
        all(s.output[i] == ref[i] for s in run.samples[peer] + run.samples[reference])
        for i in range(len(ref))
    ]
    all_same &= all(same)
    bad = [i for i, ok in enumerate(same) if not ok]
    parts.append(
        f"{peer} {sum(same)}/{len(same)} rows" + (f" (differ: rows {bad[:8]})" if bad else "")
    )
  return f"  tokens identical to {reference}: " + ", ".join(parts), all_same


def decode_run(config, params, hf_model, tunix, checkpoint, batch, args) -> harness.Run:
  prompts = random_prompts(batch, args.prompt_len, config.vocab_size)
  with Engine(
      config,
      params,
      num_slots=batch,
      max_len=args.prompt_len + args.new_tokens + 8,
      max_prefill_chunk=args.prompt_len,
  ) as engine:
    engine.precompile()
    peers = [
        (
            "engine",
            decode_peer(lambda p, n: engine_generate(engine, p, n), prompts, args.new_tokens),
        ),
        (
            "transformers",
            decode_peer(lambda p, n: hf_generate(hf_model, p, n), prompts, args.new_tokens),
        ),
    ]
    if tunix is not None:
      try:
        tunix.setup(checkpoint, prompts, args.new_tokens)
        units = batch * (args.new_tokens - 1)
        peers.append(("tunix", lambda: tunix.decode_sample(units)))
      except tunix_env.TunixUnavailable as exc:
        print(f"  Tunix: unavailable ({exc})")
    return harness.run_interleaved(
        f"decode, batch {batch}: prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy",
        peers,
        args.repetitions,
        load_threshold=args.load_threshold,
    )


def sessions_run(config, params, args) -> tuple[harness.Run, bool]:
  s, t, o, r = args.sessions, args.turns, args.obs_len, args.reply_len
  rng = np.random.default_rng(1)
  inputs = [
      [
          rng.integers(0, config.vocab_size, args.prompt_len if i == 0 else o).tolist()
          for i in range(t)
      ]
      for _ in range(s)
  ]
  sp = SamplingParams(temperature=0, max_new_tokens=r)
  max_len = args.prompt_len + (t - 1) * o + t * r + 8
  with Engine(config, params, num_slots=s, max_len=max_len, max_prefill_chunk=256) as engine:

    def episodes(reuse: bool):
      handles = [engine.open_session() for _ in range(s)]
      histories = [[] for _ in range(s)]
      for turn in range(t):
        futures = []
        for i in range(s):
          histories[i] += inputs[i][turn]
          if reuse:
            futures.append(engine.submit(handles[i], inputs[i][turn], sp))
          else:
            futures.append(engine.generate(histories[i], sp))
        for i, f in enumerate(futures):
          histories[i] += list(f.result().token_ids)
      for h in handles:
        engine.close_session(h)
      return histories

    engine.precompile()
    run = harness.run_interleaved(
        f"sessions: {s} x {t} turns, {o}-token observations, {r}-token replies",
        [
            ("session reuse", lambda: harness.measure(lambda: episodes(True), units=s * t * r)),
            ("re-prefill", lambda: harness.measure(lambda: episodes(False), units=s * t * r)),
        ],
        args.repetitions,
        load_threshold=args.load_threshold,
    )
  outputs = [smp.output for peer in run.peers for smp in run.samples[peer]]
  return run, all(o == outputs[0] for o in outputs)


def start_tunix(args):
  if args.tunix == "off":
    print("Tunix: unavailable (--tunix off)")
    return None
  try:
    python = tunix_env.ensure_venv(args.tunix_venv or None, build=args.tunix == "auto")
    return tunix_env.TunixWorker(python)
  except tunix_env.TunixUnavailable as exc:
    print(f"Tunix: unavailable ({exc})")
    return None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="bench_100m")
  parser.add_argument(
      "--rope-theta", "--rope_theta", type=float, default=None, help="override the preset's"
  )
  parser.add_argument("--prompt-len", "--prompt_len", dest="prompt_len", type=int, default=128)
  parser.add_argument("--new-tokens", "--new_tokens", dest="new_tokens", type=int, default=128)
  parser.add_argument("--batches", default="1,8,32")
  parser.add_argument("--sessions", type=int, default=8)
  parser.add_argument("--turns", type=int, default=6)
  parser.add_argument("--obs-len", "--obs_len", dest="obs_len", type=int, default=200)
  parser.add_argument("--reply-len", "--reply_len", dest="reply_len", type=int, default=32)
  parser.add_argument("--skip-sessions", action="store_true")
  parser.add_argument(
      "--tunix",
      choices=("auto", "existing", "off"),
      default="auto",
      help="auto: build Tunix's venv if missing; existing: use a built one only; off: no Tunix",
  )
  parser.add_argument(
      "--tunix-venv", default="", help="default: $BIOMNI_TUNIX_VENV or ~/.cache/..."
  )
  harness.add_arguments(parser)
  args = parser.parse_args()
  if args.new_tokens < 2 or args.prompt_len < 1:
    parser.error(
        f"--new-tokens must be >= 2 and --prompt-len >= 1, found {args.new_tokens}, "
        f"{args.prompt_len}"
    )
  batches = [int(b) for b in args.batches.split(",") if b.strip()]

  torch.set_num_threads(2)
  overrides = {} if args.rope_theta is None else {"rope_theta": args.rope_theta}
  config = M.get_preset(args.preset, **overrides)
  params = M.init_params(config, jax.random.key(0))
  print(
      f"{args.preset}: {M.num_params(params) / 1e6:.1f}M params, float32; jax {jax.__version__} on "
      f"{jax.devices()[0].platform}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
      f"{os.cpu_count()} CPUs",
      flush=True,
  )
  runs, identical, extra = [], {}, {"tunix": "off"}
  tunix = start_tunix(args)
  with tempfile.TemporaryDirectory() as checkpoint:
    hf_io.save_hf_checkpoint(config, params, checkpoint)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32
    ).eval()
    try:
      for batch in batches:
        run = decode_run(config, params, hf_model, tunix, checkpoint, batch, args)
        print(harness.format_run(run, unit="tok", ours="engine"))
        line, same = identity_report(run, "transformers")
        print(line, flush=True)
        identical[run.title] = same
        runs.append(run)
        if tunix is not None and "tunix" not in run.peers:  # its setup failed: two peers from now
          tunix.close()
          tunix = None
    finally:
      if tunix is not None:
        extra["tunix"] = tunix.versions
        tunix.close()
  if not args.skip_sessions:
    run, same = sessions_run(config, params, args)
    print(harness.format_run(run, unit="tok", ours="session reuse"))
    print(f"  same tokens both ways: {same}", flush=True)
    identical[run.title] = same
    runs.append(run)
  extra["tokens_identical"] = identical
  code = harness.finish("sampler", runs, args, extra)
  if not all(identical.values()):
    print("TOKENS DIFFER between peers: the throughput comparison is not like for like")
    code = code or 2
  return code


if __name__ == "__main__":
  sys.exit(main())
