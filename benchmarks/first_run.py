"""README's first command, measured: the learning curve, other English text, and the sample.

  python benchmarks/first_run.py [--preset=gpt:quickstart] [--workdir=/tmp/pretrax_first_run]
      [--other_text=../shared/data/tinyshakespeare.txt] [-- --config.X=Y ...]

Runs `pretrax train` in a fresh workdir as a user would (a subprocess, on the built-in corpus
unless overridden), then prints:
  curve        validation bits per byte against wall-clock seconds since the command started
               (start-up, dataset build and tokenizer training included)
  other text   `pretrax score` bits per byte on the first 20,000 characters of English the
               built-in corpus does not contain: tinyshakespeare (1600s verse) and the English
               side of Multi30k's validation captions (today's plain English), from ../shared
  sample       `pretrax sample` with its defaults and the prompt "The ", and the share of its
               words (letters only) found in the training corpus or the other text
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _words(text: str) -> list[str]:
  return re.findall(r"[A-Za-z]+", text)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="gpt:quickstart")
  parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(),
                                                        "pretrax_first_run"))
  shared = os.path.join(REPO, "..", "shared", "data")
  parser.add_argument("--other_text", default=os.path.join(shared, "tinyshakespeare.txt"))
  parser.add_argument("--captions", default=os.path.join(shared, "multi30k", "val.en-de.jsonl"))
  args, extra = parser.parse_known_args()
  pretrax = [sys.executable, "-m", "pretrax.cli"]
  shutil.rmtree(args.workdir, ignore_errors=True)
  started = time.perf_counter()
  train = subprocess.run([*pretrax, "train", f"--config={args.preset}",
                          f"--workdir={args.workdir}", *extra], capture_output=True, text=True)
  wall = time.perf_counter() - started
  if train.returncode:
    print(train.stderr[-3000:], file=sys.stderr)
    return 1
  with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  setup_s = wall - records[-1]["elapsed_s"]  # before the first step: build, tokenizer, compile
  print(f"## {args.preset}: `pretrax train` took {wall:.0f} s ({setup_s:.0f} s before the "
        "loop started)\n")
  print("| seconds | step | train loss | val bits/byte |\n|---|---|---|---|")
  for r in records:
    if "eval_bits_per_byte" in r:
      print(f"| {setup_s + r['elapsed_s']:.0f} | {r['step']} | {r['loss']:.3f} | "
            f"{r['eval_bits_per_byte']:.3f} |")

  with open(args.other_text, encoding="utf-8") as f:
    other = f.read()
  with open(args.captions, encoding="utf-8") as f:
    captions = "\n".join(json.loads(line)["source"] for line in f)
  for name, text in ((os.path.basename(args.other_text), other),
                     (f"{os.path.basename(args.captions)} English captions", captions)):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
      f.write(text[:20_000])
    score = subprocess.run([*pretrax, "score", f"--workdir={args.workdir}", f"--text={f.name}"],
                           capture_output=True, text=True)
    os.remove(f.name)
    scored = json.loads(score.stdout.strip().splitlines()[-1])
    print(f"\nother English text, {name} (first 20,000 characters): "
          f"{scored['bits_per_byte']:.3f} bits/byte")

  sample = subprocess.run([*pretrax, "sample", f"--workdir={args.workdir}", "--prompt=The "],
                          capture_output=True, text=True).stdout
  config = json.load(open(os.path.join(args.workdir, "config.json")))
  from pretrax.data import sources
  from pretrax.training import config as config_lib
  data = config_lib.from_dict(config).data
  known = set(w.lower() for w in _words(other + captions))
  for text in sources.iter_texts(data, data.train_split):
    known.update(w.lower() for w in _words(text))
  words = _words(sample)
  real = sum(w.lower() in known for w in words) / max(len(words), 1)
  print(f"sample: {len(words)} words, {real:.0%} of them real words\n```\n{sample.strip()}\n```")
  return 0


if __name__ == "__main__":
  sys.exit(main())
