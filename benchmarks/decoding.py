"""Decoding speed: the KV cache against full recomputation and against `transformers`; prints a
table.

  python benchmarks/decoding.py [--preset=gpt:small] [--prompt=64] [--new=256] [--batches=1,8]
      [--repeats=3] [--no_torch]

The model: the preset with random parameters (what decoding costs does not depend on them) and
max_seq_len raised to prompt + new when that is more (gpt:small has 256 positions, the default
run needs 320). Greedy decoding, EOS never stops a row, so every row makes `--new` tokens.
  cache       inference/decoding.py: prefill, then one token per step in one compiled loop
  recompute   the way `pretrax sample` decoded before the cache: every token a full forward pass
              over a fixed [B, prompt + new] buffer (jitted once), the whole batch at a time
              (only for --recompute_batches: it takes minutes)
  transformers GPT2LMHeadModel.generate(use_cache=True, greedy) on the same weights (exported
              with interop/hf.py), PyTorch on CPU with every core
Times are medians of --repeats runs after one warm-up run (compilation excluded); tokens/s count
the new tokens of all rows. The last column: the share of rows whose tokens equal the cache's.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, caches
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="gpt:small")
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--new", type=int, default=256)
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--recompute_batches", default="1",
                      help="batches that also time recomputation (minutes each on a CPU)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  from flax import nnx
  from pretrax.data import tokenizers
  from pretrax.inference import decoding
  from pretrax.modeling import models
  from pretrax.training import config as config_lib

  config = config_lib.load_preset(args.preset)
  tok = tokenizers.ByteTokenizer()
  length = args.prompt + args.new
  model_config = dataclasses.replace(config.model, vocab_size=384,
                                     max_seq_len=max(config.model.max_seq_len, length))
  model = models.build_model(model_config, seed=0)
  sampling = decoding.Sampling(temperature=0.0, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
  decoder = decoding.Decoder(model)
  graphdef, params = nnx.split(model)

  @jax.jit
  def next_tokens(params, buffer_bl, lengths_b):
    logits_blv = nnx.merge(graphdef, params)(buffer_bl)
    last_bv = logits_blv[jnp.arange(buffer_bl.shape[0]), lengths_b - 1]
    return jnp.argmax(decoding.tokenizer_logits(last_bv, tok.vocab_size, tok.pad_id), axis=-1)

  def recompute(prompts_bp):
    b = len(prompts_bp)
    buffer_bl = np.zeros((b, length), np.int32)
    buffer_bl[:, :args.prompt] = prompts_bp
    for i in range(args.new):
      n = args.prompt + i
      token_b = np.asarray(next_tokens(params, jnp.asarray(buffer_bl),
                                       jnp.full(b, n, jnp.int32)))
      buffer_bl[:, n] = token_b
    return buffer_bl[:, args.prompt:]

  hf_model = None
  if not args.no_torch:
    import torch
    import transformers
    from pretrax.interop import hf
    torch.set_num_threads(os.cpu_count())
    hf_config = hf.to_hf_config(model_config, {"pad_token_id": tok.pad_id,
                                               "bos_token_id": tok.bos_id,
                                               "eos_token_id": tok.eos_id})
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    state = hf.to_hf_state(model_config, nnx.to_pure_dict(nnx.state(model)))
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    hf_model.tie_weights()

  rng = np.random.default_rng(0)
  rows = [("batch", "decoder", "seconds", "tokens/s", "vs recompute", "same tokens")]
  for b in (int(x) for x in args.batches.split(",")):
    prompts_bp = rng.integers(7, tok.vocab_size, (b, args.prompt)).astype(np.int32)
    prompts = list(prompts_bp)
    cached = decoder(prompts, args.new, sampling).tokens
    seconds = {"cache": median_seconds(lambda: decoder(prompts, args.new, sampling),
                                       args.repeats)}
    agree = {"cache": 1.0}
    print(f"batch {b}: cache {seconds['cache']:.2f} s", file=sys.stderr, flush=True)
    if str(b) in args.recompute_batches.split(","):
      seconds["recompute"] = median_seconds(lambda: recompute(prompts_bp), args.repeats)
      got = recompute(prompts_bp)
      agree["recompute"] = np.mean([np.array_equal(got[r], cached[r]) for r in range(b)])
    if hf_model is not None:
      import torch
      ids = torch.from_numpy(prompts_bp.astype(np.int64))

      def generate():
        with torch.no_grad():
          return hf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                   max_new_tokens=args.new, min_new_tokens=args.new,
                                   do_sample=False, use_cache=True, pad_token_id=tok.pad_id,
                                   suppress_tokens=list(range(tok.vocab_size,
                                                              model_config.vocab_size))
                                   + [tok.pad_id])

      seconds["transformers"] = median_seconds(generate, args.repeats)
      out = generate()[:, args.prompt:].numpy()
      agree["transformers"] = np.mean([np.array_equal(out[r], cached[r]) for r in range(b)])
    print(f"batch {b}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
          file=sys.stderr, flush=True)
    for name, s in seconds.items():
      speedup = f"{seconds['recompute'] / s:.1f}x" if "recompute" in seconds else "-"
      rows.append((b, name, f"{s:.2f}", f"{b * args.new / s:,.0f}", speedup,
                   f"{agree[name]:.2f}"))

  print(f"\n{args.preset} (max_seq_len {model_config.max_seq_len}), prompt {args.prompt}, "
        f"{args.new} new tokens, greedy; {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__}; median of {args.repeats}\n")
  print("| " + " | ".join(rows[0]) + " |")
  print("|" + "---|" * len(rows[0]))
  for row in rows[1:]:
    print("| " + " | ".join(str(x) for x in row) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
