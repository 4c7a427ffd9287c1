"""Train presets on tinyshakespeare and print a table of throughput and final validation quality.

  python benchmarks/tinyshakespeare.py --presets=configs/gpt.py:tiny,configs/gpt.py:small \
      --steps=300 [--text=../shared/data/tinyshakespeare.txt] [--workdir=/tmp/bench] [-- --config.X=Y ...]
  python benchmarks/tinyshakespeare.py --steps=300 \
      --presets=configs/bart.py:tiny,configs/t5.py:tiny,configs/transformer.py:tiny

The last 10% of the file's bytes (cut at a line; the file is read as one continuous text) is
held out as validation (`config.data.validation_fraction=0.1`). Columns:
  batch      B x T (encoder-decoder: B x S+T, S = data.seq_len encoder positions, T =
             seq2seq_pipeline.decoder_length decoder positions)
  tokens/s   training tokens per second (median over log intervals, compile excluded), as the
             trainer counts them (the task's tokens_per_step: B·T; encoder-decoder B·(S+T))
  ms/step    median milliseconds per optimizer step
  MFU        model FLOPs utilization: the task's FLOPs per token (GPT 6N + 12·L·d·T; BERT with
             the MLM head at the masked positions only; encoder-decoder
             training/metrics.encoder_decoder_flops_per_token) against the device peak
  wall s     seconds of the whole `trainer.train` call: corpus, compilation, steps, evaluations
  train loss the last logged training loss (with config.train.label_smoothing, if any)
  quality    on the whole held-out 10% after training (`inference.evaluate.eval_run`):
             GPT: bits per byte; BERT: masked-token accuracy (and NSP accuracy);
             encoder-decoder: target loss in nats per target token (unsmoothed) and token
             accuracy of the decoder's targets (teacher forcing)
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default="configs/gpt.py:tiny")
  parser.add_argument("--steps", type=int, default=0, help="0: each preset's own train.steps")
  parser.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data",
                                                     "tinyshakespeare.txt"))
  parser.add_argument("--workdir", default="/tmp/pretrax_bench")
  args, extra = parser.parse_known_args()

  from pretrax.cli import main as cli
  from pretrax.inference import evaluate
  from pretrax.data import seq2seq_pipeline
  from pretrax.training import config as config_lib, tasks, trainer
  cli._quiet_logs()
  _, overrides, rest = config_lib.split_overrides(extra)
  if rest:
    parser.error(f"unrecognized arguments: {rest}")
  if not os.path.isfile(args.text):
    parser.error(f"--text: no such file {args.text}")

  rows = []
  for preset in args.presets.split(","):
    config = config_lib.load_preset(os.path.join(REPO, preset) if not os.path.isabs(preset)
                                    else preset)
    base = {"data.source": f"text:{os.path.abspath(args.text)}",
            "data.validation_fraction": "0.1",
            "data.data_dir": os.path.join(args.workdir, "tfds")}
    if args.steps:
      base["train.steps"] = str(args.steps)
    config = config_lib.apply_overrides(config, base | overrides)
    workdir = os.path.join(args.workdir, preset.replace("/", "_").replace(":", "_"))
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    trainer.train(config, workdir)
    wall_s = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    timed = [r for r in records[1:] if "eval_loss" not in r] or records[1:] or records
    # The trainer's tokens/s counts the task's tokens (encoder-decoder: B·(S+T)).
    tokens_per_step = tasks.task_class(config)(config, tokenizer=None, workdir="").tokens_per_step
    batch = f"{config.train.batch_size}x{config.data.seq_len}"
    tok_s = statistics.median(r["tokens_per_sec"] for r in timed)
    result = evaluate.eval_run(workdir, max_batches=0)
    family = config.model.family
    if family == "gpt":
      quality = f"val bpb {result['bits_per_byte']:.3f}"
    elif family == "bert":
      quality = f"val MLM acc {result['mlm_accuracy']:.3f}" + (
          f", NSP acc {result['nsp_accuracy']:.3f}" if "nsp_accuracy" in result else "")
    else:  # encoder_decoder: loss, perplexity, accuracy over the held-out targets
      batch += f"+{seq2seq_pipeline.decoder_length(config.data)}"
      quality = (f"val loss {result['loss']:.3f} nats/token (ppl {result['perplexity']:.2f}), "
                 f"acc {result['accuracy']:.3f}")
    rows.append((preset, config.train.steps, batch, f"{tok_s:,.0f}",
                 f"{1000 * tokens_per_step / tok_s:.1f}",
                 f"{statistics.median(r['mfu'] for r in timed):.1%}", f"{wall_s:.0f}",
                 f"{records[-1]['loss']:.3f}", quality))

  import jax
  header = ("preset", "steps", "batch", "tokens/s", "ms/step", "MFU", "wall s", "train loss",
            "quality")
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  print(f"\ndevice: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
  for row in [header, tuple("-" * w for w in widths), *rows]:
    print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
