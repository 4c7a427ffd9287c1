"""Few-shot evaluation speed: pretrax's evaluator against lm-evaluation-harness's `hf` model on
the same run exported; prints a table.

  python benchmarks/fewshot.py --workdir=RUN [--docs=1000] [--shots=0,3] [--repeats=3]
      [--no_reference]

The task: `--docs` documents of 4-way multiple choice made from tinyshakespeare (../shared/data):
a line, then which of 4 lines follows it (3 drawn from elsewhere), with worked examples from 100
other documents. Each row: k worked examples; requests (documents x 4); seconds (median of
--repeats after a warm-up run, so compilation is excluded; the harness builds its prompts inside
the timed call, pretrax's are built outside); requests/s; acc and acc_norm of both (they must be
equal); the ratio harness seconds / pretrax seconds.
  pretrax    inference/fewshot.py: packed rows, shared contexts through the KV cache
  harness    lm_eval.simple_evaluate(model="hf", dtype=float32, batch_size=32, device=cpu) on
             the run exported with `pretrax export` (transformers + PyTorch, every core)
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time


def _write_task(directory: str, docs: int) -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, "..", "..", "shared", "data", "tinyshakespeare.txt")) as f:
    lines = [line for line in f.read().split("\n") if len(line.split()) >= 4]
  rnd = random.Random(0)

  def make(count, offset):
    out = []
    for i in range(count):
      context, right = lines[offset + 2 * i], lines[offset + 2 * i + 1]
      choices = [lines[rnd.randrange(len(lines))] for _ in range(3)]
      label = rnd.randrange(4)
      choices.insert(label, right)
      out.append({"context": context, "choices": choices, "label": label})
    return out

  for split, rows in (("train", make(100, 0)), ("test", make(docs, 1000))):
    with open(os.path.join(directory, f"next_line_{split}.jsonl"), "w") as f:
      f.writelines(json.dumps(row) + "\n" for row in rows)
  path = os.path.join(directory, "bench_next_line.yaml")
  with open(path, "w") as f:
    f.write("task: bench_next_line\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    train: {directory}/next_line_train.jsonl\n"
            f"    test: {directory}/next_line_test.jsonl\n"
            "test_split: test\nfewshot_split: train\noutput_type: multiple_choice\n"
            "doc_to_text: \"{{context}}\\n\"\ndoc_to_choice: choices\ndoc_to_target: label\n"
            "target_delimiter: \"\"\n")
  return path


def median_seconds(fn, repeats: int):
  result = fn()  # warm-up: compilation
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained GPT run")
  parser.add_argument("--docs", type=int, default=1000)
  parser.add_argument("--shots", default="0,3")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_reference", action="store_true")
  args = parser.parse_args()

  from pretrax.inference import fewshot, loading, task_files
  tmp = tempfile.mkdtemp(prefix="fewshot_bench_")
  os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=os.path.join(tmp, "hf"))
  path = _write_task(tmp, args.docs)
  run = loading.load_run(args.workdir)
  task = task_files.load_task(path)
  scorer = fewshot.Scorer(run)
  if not args.no_reference:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from pretrax.interop import export
    exported = os.path.join(tmp, "hf_export")
    export.export_hf(args.workdir, exported)
    manager = TaskManager(include_path=tmp, include_defaults=False)

  print(f"run {args.workdir} (step {run.step}, {run.config.model.num_layers} layers, "
        f"d_model {run.config.model.d_model}, {run.config.model.max_seq_len} positions, "
        f"{run.tokenizer.kind} {run.tokenizer.vocab_size}); {args.docs} documents x 4 choices")
  print(f"{'k':>2} {'requests':>8} {'pretrax s':>9} {'req/s':>7} {'acc':>6} {'acc_norm':>8} | "
        f"{'harness s':>9} {'req/s':>7} {'acc':>6} {'acc_norm':>8} | {'ratio':>5}")
  for k in (int(s) for s in args.shots.split(",")):
    rnd = random.Random(1234)
    requests = [(r.context, r.continuation) for doc in task.docs
                for r in task.requests(doc, k, rnd)]
    ours_s, _ = median_seconds(lambda: scorer.loglikelihood(requests), args.repeats)
    ours = fewshot.evaluate(run, task, num_fewshot=k).metrics
    row = (f"{k:>2} {len(requests):>8} {ours_s:>9.2f} {len(requests) / ours_s:>7.0f} "
           f"{ours['acc']:>6.3f} {ours['acc_norm']:>8.3f} | ")
    if args.no_reference:
      print(row + f"{'-':>9} {'-':>7} {'-':>6} {'-':>8} | {'-':>5}")
      continue
    evaluate = lambda: lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={exported},dtype=float32",
        tasks=["bench_next_line"], num_fewshot=k, task_manager=manager, batch_size=32,
        device="cpu")
    theirs_s, result = median_seconds(evaluate, args.repeats)
    theirs = result["results"]["bench_next_line"]
    print(row + f"{theirs_s:>9.2f} {len(requests) / theirs_s:>7.0f} {theirs['acc,none']:>6.3f} "
          f"{theirs['acc_norm,none']:>8.3f} | {theirs_s / ours_s:>5.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
