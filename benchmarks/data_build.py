"""How fast a corpus becomes packed rows, and how fast training reads them; prints a table.

  python benchmarks/data_build.py [--mb=64] [--repeats=3] [--workers=1,2] [--seq_len=1024]
      [--text=../shared/data/tinyshakespeare.txt] [--workdir=/tmp/pretrax_data_bench]

The corpus: `--mb` MB of JSONL documents of 1-8 KB, made of tinyshakespeare's paragraphs drawn in
a seeded order (every document differs). Stages, each timed from a cold start (fresh data dir)
and reported as the median of `--repeats` runs:
  documents     `text:` files -> the TFDS document dataset (one process; data/local_text.py)
  spm encode    SentencePiece's encoder alone on every document, one process (the reference)
  rows          documents -> packed rows (data/row_store.py: read, tokenize, pack, write, CRC),
                byte and SentencePiece (vocabulary 8,000, trained on tinyshakespeare), with each
                number of `--workers` processes: wall time (the pool's start-up, ~3 s of
                imports, included), and what each process packs while it works
  sentence rows BERT's rows of sentence chunks (mlm+nsp/sop: every sentence tokenized on its
                own), SentencePiece, one process
  read          training-side reads: global batches of gpt.py:small's shape (32 x 256) from the
                SentencePiece rows, shuffled, in one process (benchmarks/throughput.py's
                pipeline row sets the same reads against the training step)
MB are 10^6 bytes of UTF-8 text.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(text_path: str, path: str, megabytes: int) -> int:
  """Writes JSONL documents of 1-8 KB until `megabytes` MB; returns the bytes of text."""
  with open(text_path, encoding="utf-8") as f:
    paragraphs = [p for p in f.read().split("\n\n") if p.strip()]
  rng = np.random.default_rng(0)
  total = 0
  with open(path, "w", encoding="utf-8") as f:
    while total < megabytes * 1_000_000:
      target, parts, size = int(rng.integers(1_000, 8_000)), [], 0
      while size < target:
        parts.append(paragraphs[int(rng.integers(len(paragraphs)))])
        size += len(parts[-1]) + 2
      doc = "\n\n".join(parts)
      total += len(doc.encode("utf-8"))
      f.write(json.dumps({"text": doc}) + "\n")
  return total


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mb", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data",
                                                     "tinyshakespeare.txt"))
  parser.add_argument("--workdir", default="/tmp/pretrax_data_bench")
  args = parser.parse_args()

  from pretrax.cli import main as cli
  from pretrax.data import batches, config as data_config, global_batches, sources, tokenizers
  cli._quiet_logs()
  os.makedirs(args.workdir, exist_ok=True)
  corpus = os.path.join(args.workdir, "corpus.jsonl")
  text_bytes = make_corpus(args.text, corpus, args.mb)
  mb = text_bytes / 1e6
  with open(args.text, encoding="utf-8") as f:
    spm = tokenizers.train_sentencepiece(f.read().split("\n\n"),
                                         os.path.join(args.workdir, "spm"), vocab_size=8000)
  table = [("stage", "tokenizer", "processes", "seconds", "MB/s", "MB/s per process",
            "MB/s per working process")]

  def config(tokenizer: str, data_dir: str, workers: int = 1):
    # Shards of mb/8 MB: every process count up to 8 has work for each process.
    return data_config.DataConfig(source=f"text:{corpus}", tokenizer=tokenizer,
                                  seq_len=args.seq_len, data_dir=data_dir, build_workers=workers,
                                  build_shard_mb=max(1, args.mb // 8), validation_fraction=0.01)

  fresh = os.path.join(args.workdir, "fresh")

  def documents():
    shutil.rmtree(fresh, ignore_errors=True)
    sources.open_source(config("byte", fresh), "train")

  seconds = statistics.median(timed(documents) for _ in range(args.repeats))
  table.append(("documents", "-", 1, seconds, mb / seconds, mb / seconds, mb / seconds))
  built = config("byte", fresh)
  texts = list(sources.iter_texts(built, "train"))
  split_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
  seconds = statistics.median(timed(lambda: spm.encode_batch(texts)) for _ in range(args.repeats))
  table.append(("spm encode", "spm", 1, seconds, split_mb / seconds, split_mb / seconds,
                split_mb / seconds))
  del texts

  tokenizer_of = {"byte": tokenizers.ByteTokenizer(), "spm": spm}
  stages = [("rows", name, int(w)) for name in tokenizer_of for w in args.workers.split(",")]
  stages.append(("sentence rows", "spm", 1))  # BERT's mlm+nsp/sop rows
  for stage, name, workers in stages:
    cfg = config(name if name == "byte" else spm.model_path, fresh, workers)
    if stage == "sentence rows":
      cfg = data_config.DataConfig(**{**cfg.__dict__, "objective": "mlm+nsp"})
    working = []

    def rows():
      shutil.rmtree(os.path.join(fresh, batches.ROWS_DIR), ignore_errors=True)
      working.append(batches.packed_rows(cfg, tokenizer_of[name], "train").manifest["build"]
                     ["mb_per_s_per_process"])

    seconds = statistics.median(timed(rows) for _ in range(args.repeats))
    table.append((stage, name, workers, seconds, split_mb / seconds,
                  split_mb / seconds / workers, statistics.median(working)))

  small = data_config.DataConfig(**{**config("byte", fresh).__dict__, "seq_len": 256})
  store = batches.packed_rows(small, spm, "train")
  reader = global_batches.GlobalBatches(
      store, batches._causal_examples, global_batch_size=32, rows=slice(0, 32), seed=0,
      shuffle=True, repeat=True)
  next(reader)
  n = 300
  seconds = statistics.median(timed(lambda: [next(reader) for _ in range(n)])
                              for _ in range(args.repeats))
  read_tokens = n * 32 * 256 / seconds
  reader.close()

  print(f"\ncorpus: {mb:,.1f} MB of text in {corpus}; rows of {args.seq_len} tokens; "
        f"median of {args.repeats}; {os.cpu_count()} CPUs\n")
  print("| " + " | ".join(table[0]) + " |")
  print("|" + "---|" * len(table[0]))
  for stage, tok, procs, seconds, rate, per, working in table[1:]:
    print(f"| {stage} | {tok} | {procs} | {seconds:.2f} | {rate:.1f} | {per:.1f} | "
          f"{working:.1f} |")
  print(f"\nread: {read_tokens:,.0f} tokens/s per process (gpt.py:small batches, 32 x 256, "
        f"{len(store):,} rows, shuffled)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
