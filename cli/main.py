r"""The `pretrax` command line.

  pretrax train --config=gpt:tiny --workdir=DIR [--config.SECTION.FIELD=VALUE ...]
  pretrax finetune --config=finetune:classify --init=PRETRAINED_DIR --workdir=DIR \
      --config.data.train=FILE --config.data.eval=FILE [--config.SECTION.FIELD=VALUE ...]
  pretrax eval --workdir=DIR [--split=validation] [--step=N] [--batches=N]
  pretrax eval --workdir=DIR --task=TASK.yaml [--num_fewshot=K] [--limit=N] [--seed=S]
  pretrax score --workdir=DIR --text=FILE [--step=N]
  pretrax sample --workdir=DIR --prompt=TEXT [--max_new_tokens=N --temperature --top_k --top_p --seed]
  pretrax generate --workdir=DIR --input=FILE.jsonl --output=FILE.jsonl [--num_beams=4]
  pretrax export --workdir=DIR --format=hf|params --output=OUT [--step=N]
  pretrax import --format=hf --input=HF_DIR --workdir=DIR [--tokenizer=byte|PATH.model|PATH.json]
  pretrax sweep --config=gpt:tiny --workdir=runs/NAME --grid=model.norm_position=pre,post \
      [--grid=KEY=V1,V2 ...] [--set=KEY=VALUE ...] [--seeds=3] [--parallel=N] [--dry_run]
  pretrax sweep --sweep=configs/sweeps/NAME.py --workdir=runs/NAME
  pretrax compare runs/NAME [MORE_RUNS_OR_SWEEPS ...] [--output=DIR] [--metric=eval_loss]
  pretrax data build --config=gpt:small [--config.SECTION.FIELD=VALUE ...] [--workdir=DIR]
  pretrax tokenizer train --input=PATH [PATH ...] --output=PREFIX --vocab_size=N [--model_type=unigram|bpe]
"""

import argparse
import json
import logging
import os
import shlex
import sys


def _quiet_logs() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from absl import flags
  if not flags.FLAGS.is_parsed():  # Grain worker processes read absl flags
    flags.FLAGS.mark_as_parsed()
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()


def _multi_process_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--coordinator_address", default=None,
                 help="multi-process: HOST:PORT of process 0 (the same on all), or 'auto' to let "
                      "JAX detect it (Cloud TPU pods); not needed on SLURM, mpirun or GKE TPU")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)


class _PrintSchema(argparse.Action):
  """--help_config: every config field with its default and comment, then exit (like --help)."""

  def __call__(self, parser, namespace, values, option_string=None):
    from pretrax.training import config as config_lib
    print(config_lib.describe_schema())
    parser.exit()


def _restart_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--help_config", action=_PrintSchema, nargs=0,
                 help="list every config field (--config.SECTION.FIELD) with its default and "
                      "what it does, then exit")
  p.add_argument("--restart_data", action="store_true",
                 help="restore model and optimizer state but start the data stream over (on "
                      "changed data; or to resume BERT pretraining on another number of "
                      "processes)")
  p.add_argument("--restart", action="store_true",
                 help="start a new run from step 0 in a --workdir that has trained before; the "
                      "previous run's files are moved to WORKDIR/previous_runs/, not deleted")


def _early_stopping(value: str) -> bool | str:
  choices = {"true": True, "false": False, "never": "never"}
  if value.lower() not in choices:
    raise argparse.ArgumentTypeError(f"{value!r}: expected true, false or never")
  return choices[value.lower()]


def _decoding_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--num_beams", type=int, default=1,
                 help="beam search with this many beams (1 = sample); --num_samples returns "
                      "the best hypotheses")
  p.add_argument("--length_penalty", type=float, default=1.0,
                 help="beam hypotheses score sum(log p) / length**length_penalty")
  p.add_argument("--early_stopping", type=_early_stopping, default=False,
                 help="beam search: true | false | never, as transformers' generate")
  p.add_argument("--stop", action="append", default=[],
                 help="stop a row once its text contains this string (repeatable); the text "
                      "is cut before it")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="pretrax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  from pretrax.training import config as config_lib
  raw = argparse.RawDescriptionHelpFormatter
  p = sub.add_parser(
      "train", help="train or resume a run", formatter_class=raw,
      description="Train (or resume) a run. --config=PRESET or a file (path/to/file.py:variant); "
                  "any config field can be overridden with --config.SECTION.FIELD=VALUE "
                  "(--help_config lists them all with their defaults).",
      epilog="presets:\n" + config_lib.describe_presets() + "\n\nexamples:\n"
             "  pretrax train --config=gpt:tiny --workdir=workdirs/gpt_tiny\n"
             "  pretrax train --config=gpt:tiny --workdir=workdirs/play "
             "--config.data.source=text:play.txt --config.train.steps=2000")
  p.add_argument("--workdir", required=True, help="run directory (created; resumed if it exists)")
  p.add_argument("--print_sharding", action="store_true",
                 help="print each parameter's mesh placement and per-device memory, then exit")
  _restart_arguments(p)
  _multi_process_arguments(p)

  p = sub.add_parser(
      "finetune", help="fine-tune a pretrained run as a classifier", formatter_class=raw,
      description="Fine-tune the run in --init on labelled examples "
                  "(--config.data.train / --config.data.eval).",
      epilog="example:\n  pretrax finetune --config=finetune:classify --init=workdirs/gpt_tiny "
             "--workdir=workdirs/cls --config.data.train=train.jsonl "
             "--config.data.eval=dev.jsonl")
  p.add_argument("--init", required=True, help="pretrained run directory")
  p.add_argument("--workdir", required=True, help="fine-tuning run directory (resumed if it exists)")
  _restart_arguments(p)
  _multi_process_arguments(p)

  p = sub.add_parser("eval", help="evaluate a checkpoint (validation split, or a few-shot task "
                     "file); prints one JSON line", formatter_class=raw, epilog="examples:\n"
                     "  pretrax eval --workdir=workdirs/gpt_tiny\n"
                     "  pretrax eval --workdir=workdirs/gpt_tiny --batches=0   # the whole split\n"
                     "  pretrax eval --workdir=workdirs/gpt_tiny --task=configs/tasks/"
                     "pydoc_next_sentence.yaml --num_fewshot=3")
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default=None, help="default: validation (or test)")
  p.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
  p.add_argument("--batches", type=int, default=None,
                 help="validation batches (default: config.train.eval_steps; 0 = whole split)")
  p.add_argument("--task", default=None,
                 help="a few-shot task file (lm-evaluation-harness YAML; see README)")
  p.add_argument("--num_fewshot", type=int, default=None,
                 help="worked examples per document (default: the task file's, else 0)")
  p.add_argument("--limit", type=int, default=None, help="evaluate the first N documents")
  p.add_argument("--seed", type=int, default=1234,
                 help="seed of the worked examples' draw (lm-evaluation-harness's default)")
  p.add_argument("--no_bos", action="store_true",
                 help="do not start contexts with BOS (for models trained without it)")

  p = sub.add_parser("score", help="loss and bits per byte of a text file; prints one JSON line",
                     formatter_class=raw, epilog="example:\n"
                     "  pretrax score --workdir=workdirs/gpt_tiny --text=README.md")
  p.add_argument("--workdir", required=True)
  p.add_argument("--text", required=True, help="UTF-8 text file scored as one document")
  p.add_argument("--step", type=int, default=None)

  p = sub.add_parser("sample", help="print a continuation of a prompt, or of each prompt of a file",
                     formatter_class=raw, epilog="examples:\n"
                     "  pretrax sample --workdir=workdirs/gpt_tiny --prompt=\"The module\"\n"
                     "  pretrax sample --workdir=workdirs/gpt_tiny --prompt=\"The module\" "
                     "--temperature=0   # greedy\n"
                     "  pretrax sample --workdir=workdirs/gpt_tiny --prompts=prompts.jsonl "
                     "--num_samples=3 > samples.jsonl")
  p.add_argument("--workdir", required=True)
  p.add_argument("--prompt", default="")
  p.add_argument("--prompts", default=None,
                 help='JSONL file, one {"prompt": "..."} per line: continued in one batch, one '
                      'JSON line out per prompt and sample ({"prompt", "sample", "generation"})')
  p.add_argument("--num_samples", type=int, default=1, help="continuations of each prompt")
  p.add_argument("--max_new_tokens", type=int, default=200)
  p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="0 = off")
  p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None)
  _decoding_arguments(p)

  p = sub.add_parser(
      "generate", help="an encoder-decoder's (or a GPT's trained on pairs) output for each "
                       "source of a JSONL file",
      formatter_class=raw,
      description='Reads {"source": ...} lines (other fields are kept), writes each with its '
                  '"generation" to --output. Greedy unless --num_beams or --temperature say '
                  'otherwise. When every line has a "target", prints exact match, BLEU, chrF '
                  'and ROUGE of the generations against the targets as one JSON line.',
      epilog="examples:\n"
             "  pretrax generate --workdir=workdirs/translate --input=val.jsonl "
             "--output=val.out.jsonl --num_beams=4\n"
             "  pretrax generate --workdir=workdirs/bart_tiny --input=docs.jsonl "
             "--output=out.jsonl --temperature=0.7 --top_p=0.9")
  p.add_argument("--workdir", required=True)
  p.add_argument("--input", required=True, help='JSONL file, one {"source": "..."} per line')
  p.add_argument("--output", required=True, help="JSONL file written (replaced when complete)")
  p.add_argument("--field", default="source", help="the field of each line to read")
  p.add_argument("--max_new_tokens", type=int, default=128)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=int, default=0, help="0 = off")
  p.add_argument("--top_p", type=float, default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None)
  _decoding_arguments(p)

  p = sub.add_parser("export", help="export a checkpoint; prints one JSON line",
                     formatter_class=raw, epilog="example (needs pip install -e \".[hf]\"):\n"
                     "  pretrax export --workdir=workdirs/gpt_tiny --format=hf "
                     "--output=exports/gpt_tiny_hf",
                     description="--format=hf: a folder transformers loads (GPT2LMHeadModel / "
                                 "BertForPreTraining / BartForConditionalGeneration / "
                                 "T5ForConditionalGeneration / MarianMTModel); "
                                 "--format=params: a params-only run "
                                 "directory that eval, score and sample accept as --workdir.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--format", required=True, choices=("hf", "params"))
  p.add_argument("--output", required=True)
  p.add_argument("--step", type=int, default=None, help="default: latest checkpoint")

  p = sub.add_parser("import", help="turn a local Hugging Face GPT-2/BERT folder into a run",
                     formatter_class=raw, epilog="example:\n"
                     "  pretrax import --format=hf --input=exports/gpt_tiny_hf "
                     "--workdir=workdirs/imported")
  p.add_argument("--format", required=True, choices=("hf",))
  p.add_argument("--input", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--tokenizer", default=None,
                 help="byte | PATH.model | PATH/tokenizer.json (default: the folder's own: "
                      "pretrax's from pretrax export, else its Hugging Face tokenizer.json or "
                      "vocab.json + merges.txt)")

  p = sub.add_parser(
      "sweep", help="train every run of a grid of overrides (resumable), then compare them",
      formatter_class=raw,
      description="Each run is an ordinary `pretrax train` in WORKDIR/<run name>/, named after "
                  "its overrides. Running the same command again skips finished runs and "
                  "resumes the others from their checkpoints; a changed grid adds runs and "
                  "never trains over one. SIGTERM / SIGINT checkpoint the running runs and stop. "
                  "At the end, the table of `pretrax compare WORKDIR`.",
      epilog="examples:\n"
             "  pretrax sweep --config=gpt:tiny --workdir=runs/norm_pos "
             "--grid=model.norm_position=pre,post --grid=model.position=learned,rope "
             "--set=train.steps=500 --seeds=3\n"
             "  pretrax sweep --sweep=gpt_norm_position --workdir=runs/norm_pos   "
             "# configs/sweeps/gpt_norm_position.py\n"
             "  pretrax sweep ... --dry_run > commands.txt   # one `pretrax train` per line, for "
             "a scheduler")
  p.add_argument("--workdir", required=True, help="the sweep's directory; one run per subdirectory")
  p.add_argument("--sweep", default=None,
                 help="a sweep file (configs/sweeps/NAME.py, or NAME for one shipped with "
                      "pretrax) instead of --config")
  p.add_argument("--grid", action="append", default=[],
                 help="KEY=V1,V2,...: one axis of the grid (repeatable; runs = the product)")
  p.add_argument("--set", action="append", default=[],
                 help="KEY=VALUE for every run (repeatable; --config.KEY=VALUE works too)")
  p.add_argument("--seeds", type=int, default=None,
                 help="N runs of every configuration, train.seed = seed, seed+1, ...")
  p.add_argument("--parallel", type=int, default=1,
                 help="runs at a time (they share this machine's devices)")
  p.add_argument("--dry_run", action="store_true",
                 help="print one `pretrax train` command per run and exit")

  p = sub.add_parser(
      "compare", help="collate runs and sweeps: a table, summary.csv and plots",
      formatter_class=raw,
      description="One row per run: the settings that differ between the runs, final train "
                  "loss, the best of each eval metric, tokens/s, MFU, steps, wall time, "
                  "parameters; runs differing only in train.seed are also summarized as mean ± "
                  "std. Writes summary.csv and PNG plots to --output.",
      epilog="examples:\n  pretrax compare runs/norm_pos\n"
             "  pretrax compare runs/a runs/b workdirs/gpt_tiny --output=comparisons/ab")
  p.add_argument("paths", nargs="+", help="run directories or sweep directories")
  p.add_argument("--output", default=None,
                 help="where summary.csv and plots/ go (default: the one path given)")
  p.add_argument("--metric", default=None,
                 help="the metric plotted (default: eval_loss, else the first eval metric)")

  p = sub.add_parser("data", help="data tools")
  dsub = p.add_subparsers(dest="data_command", required=True)
  d = dsub.add_parser(
      "build", formatter_class=raw,
      help="tokenize and pack a config's corpus into rows, once (train does it when needed)",
      description="Build the packed rows that `pretrax train` reads for --config (its training "
                  "and validation splits), using every core (config.data.build_workers), with "
                  "progress; prints one JSON line per split. Rows already built are checked and "
                  "reused.",
      epilog="examples:\n"
             "  pretrax data build --config=gpt:small --config.data.source=text:corpus/\n"
             "  pretrax data build --config=gpt:small --config.data.tokenizer=train "
             "--workdir=workdirs/small   # the run's own tokenizer")
  d.add_argument("--workdir", default=None,
                 help="a run directory whose tokenizer to use (needed with "
                      "config.data.tokenizer=train, which trains it there first)")
  d.add_argument("--split", action="append", default=None,
                 help="a split to build (repeatable; default: the training and validation splits)")

  d = dsub.add_parser(
      "tasks", formatter_class=raw,
      help="write the data of the example few-shot tasks (configs/tasks/) from the default corpus",
      description="Writes JSONL files made from the default corpus's held-out documents, which "
                  "the task files under configs/tasks/ read (see data/example_tasks.py).",
      epilog="example (from the repository root):\n"
             "  pretrax data tasks --output=workdirs/tasks\n"
             "  pretrax eval --workdir=RUN --task=configs/tasks/pydoc_next_sentence.yaml "
             "--num_fewshot=3")
  d.add_argument("--output", default="workdirs/tasks",
                 help="directory to write (the task files read workdirs/tasks)")
  d.add_argument("--seed", type=int, default=0)

  p = sub.add_parser("tokenizer", help="tokenizer tools")
  tsub = p.add_subparsers(dest="tokenizer_command", required=True)
  t = tsub.add_parser("train", help="train a SentencePiece tokenizer with pretrax's special tokens")
  t.add_argument("--input", required=True, nargs="+",
                 help=".txt/.jsonl/.parquet files or directories (same rules as "
                      "config.data.source=text:)")
  t.add_argument("--output", required=True, help="writes PREFIX.model and PREFIX.vocab")
  t.add_argument("--vocab_size", type=int, required=True)
  t.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
  return parser


def _train(args, preset, overrides) -> None:
  from pretrax.training import config as config_lib, trainer
  saved = os.path.join(args.workdir, "config.json")
  if preset:
    base = config_lib.load_preset(preset)
  elif os.path.exists(saved):  # continue a run (or an imported model) with its own config
    base = config_lib.load_json(saved)
  else:
    raise config_lib.ConfigError("pretrax train needs --config=PATH[:VARIANT], e.g. "
                                 "--config=gpt:tiny (or a --workdir holding a run)")
  trainer.train(config_lib.apply_overrides(base, overrides), args.workdir,
                print_sharding=args.print_sharding, restart_data=args.restart_data,
                restart=args.restart)


def _data_build(args, preset, overrides) -> None:
  from pretrax.data import batches, sources, tokenizers
  from pretrax.training import config as config_lib, run_dir
  if not preset:
    raise config_lib.ConfigError("pretrax data build needs --config=PRESET, e.g. "
                                 "--config=gpt:small")
  config = config_lib.apply_overrides(config_lib.load_preset(preset), overrides)
  if args.workdir:
    tokenizer = run_dir.prepare_tokenizer(config, args.workdir)
  elif config.data.tokenizer == "train":
    raise config_lib.ConfigError("config.data.tokenizer=train trains the run's tokenizer: give "
                                 "--workdir=RUN_DIR to train it there and build with it")
  else:
    tokenizer = tokenizers.load_tokenizer(config.data.tokenizer)
  for split in args.split or [config.data.train_split, sources.eval_split(config.data)]:
    store = batches.packed_rows(config.data, tokenizer, split)
    print(json.dumps({"split": split, "rows": len(store), "row_len": store.row_len,
                      "directory": store.directory, **store.manifest["build"]}), flush=True)


def _sweep(args, preset, overrides) -> int:
  from pretrax.experiments import grid, sweep
  spec = grid.make_sweep(preset, args.grid, args.set, args.seeds, args.sweep, overrides)
  if args.dry_run:
    print("\n".join(sweep.command_lines(spec, args.workdir)))
    return 0
  if spec.question:
    print(f"pretrax sweep: {spec.question.splitlines()[0]}", flush=True)
  print(f"pretrax sweep: {len(spec.runs)} run(s) in {args.workdir}, {args.parallel} at a time",
        flush=True)
  outcome = sweep.run_sweep(spec, args.workdir, parallel=args.parallel, argv=sys.argv,
                            log=lambda line: print(line, flush=True))
  if outcome["signal"]:
    print(f"pretrax sweep: stopped by {outcome['signal']}: {len(outcome['stopped'])} run(s) "
          "checkpointed; run the same command again to resume", flush=True)
  elif not outcome["failed"]:
    _compare([args.workdir], None, None)
  if outcome["failed"]:
    print(f"pretrax sweep: {len(outcome['failed'])} run(s) failed: "
          f"{', '.join(outcome['failed'])}; their train.log says why. Running the same command "
          "again retries them.", file=sys.stderr)
  print(json.dumps({"workdir": args.workdir, "runs": len(spec.runs)} | outcome))
  return 1 if outcome["failed"] else 0


def _compare(paths, output, metric) -> None:
  from pretrax.experiments import compare
  comparison = compare.compare(paths, output, metric)
  print(comparison.table)
  print(json.dumps(comparison.summary()))


def _tokenizer_train(args) -> None:
  from pretrax.data import local_text, tokenizers
  texts = (text for path in args.input for _, text in local_text.read_local_documents(path))
  tokenizer = tokenizers.train_sentencepiece(texts, args.output, vocab_size=args.vocab_size,
                                             model_type=args.model_type)
  print(json.dumps({"model": f"{args.output}.model", **tokenizer.describe()}))


def _finetune(args, preset, overrides) -> None:
  from pretrax.training import config as config_lib, trainer
  if not preset:
    raise config_lib.ConfigError("pretrax finetune needs --config=finetune:classify or "
                                 "finetune:seq2seq")
  config = config_lib.apply_overrides(config_lib.load_preset(preset), overrides)
  config.finetune.init = args.init
  trainer.train(config, args.workdir, restart_data=args.restart_data, restart=args.restart)


def _generate(args) -> None:
  from pretrax.data import files
  from pretrax.inference import generate, text_metrics
  records = generate.read_records(args.input, args.field, "--input")
  rows = generate.generate_records(
      args.workdir, records, args.max_new_tokens, num_beams=args.num_beams,
      length_penalty=args.length_penalty, early_stopping=args.early_stopping,
      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
      batch_size=args.batch_size, stop=tuple(args.stop), step=args.step, field=args.field)
  lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  files.atomic_write(args.output, lines.encode("utf-8"))
  print(f"pretrax: wrote {len(rows)} generation(s) to {args.output}", file=sys.stderr)
  if all(isinstance(row.get("target"), str) for row in rows):
    print(json.dumps(text_metrics.generation_metrics([r["generation"] for r in rows],
                                                     [r["target"] for r in rows])))


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  from pretrax.cli import startup
  try:
    set_up = startup.prepare()  # before anything starts JAX's backend
  except ValueError as e:
    print(f"pretrax: error: {e}", file=sys.stderr)
    return 2
  from pretrax.data.errors import InputError
  from pretrax.training.checkpointing import CheckpointError
  from pretrax.training.config import ConfigError, split_overrides
  from pretrax.training.run_dir import RunDirError
  try:
    preset, overrides, rest = split_overrides(argv)
  except ConfigError as e:
    print(f"pretrax: error: {e}", file=sys.stderr)
    return 2
  args = _parser().parse_args(rest)
  if (preset or overrides) and args.command not in ("train", "finetune", "data", "sweep"):
    print(f"pretrax: error: --config applies to `pretrax train`, `finetune`, `sweep` and "
          f"`data build` only; "
          f"`{args.command}` reads the config saved in --workdir", file=sys.stderr)
    return 2
  _quiet_logs()
  if args.command in ("train", "finetune"):
    for line in set_up:
      print(f"pretrax: {line}", file=sys.stderr)
  try:
    if args.command in ("train", "finetune"):
      from pretrax.training import distributed
      distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
      (_train if args.command == "train" else _finetune)(args, preset, overrides)
    elif args.command == "sweep":
      return _sweep(args, preset, overrides)
    elif args.command == "compare":
      _compare(args.paths, args.output, args.metric)
    elif args.command == "data" and args.data_command == "tasks":
      from pretrax.data import example_tasks
      print(json.dumps({"output": args.output,
                        "files": example_tasks.write_example_tasks(args.output, seed=args.seed)}))
    elif args.command == "data":
      _data_build(args, preset, overrides)
    elif args.command == "eval" and args.task:
      from pretrax.inference import fewshot
      if args.split is not None or args.batches is not None:
        raise InputError("--task evaluates the task file's documents: drop --split / --batches")
      print(json.dumps(fewshot.eval_task(args.workdir, args.task, num_fewshot=args.num_fewshot,
                                         limit=args.limit, seed=args.seed,
                                         add_bos=not args.no_bos, step=args.step)))
    elif args.command == "eval":
      from pretrax.inference import evaluate
      if args.num_fewshot is not None or args.limit is not None:
        raise InputError("--num_fewshot and --limit go with --task=TASK.yaml")
      result = evaluate.eval_run(args.workdir, args.split, args.step, args.batches)
      if "bits_per_byte" in result:  # a language model
        run = shlex.quote(args.workdir)
        print(f"pretrax: next: pretrax score --workdir={run} --text=FILE (bits per byte of your "
              f"own text); pretrax sample --workdir={run}", file=sys.stderr)
      print(json.dumps(result))
    elif args.command == "score":
      from pretrax.inference import evaluate
      with open(args.text, "rb") as f:
        raw = f.read()
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise InputError(f"{args.text}: not UTF-8 text (byte {e.start}: {e.reason})") from None
      print(json.dumps(evaluate.score_text(args.workdir, text, args.step)))
    elif args.command == "sample":
      from pretrax.inference import generate
      options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     seed=args.seed, step=args.step, num_samples=args.num_samples,
                     num_beams=args.num_beams, length_penalty=args.length_penalty,
                     early_stopping=args.early_stopping, stop=tuple(args.stop))
      if args.prompts:
        if args.prompt:
          raise InputError("give --prompt or --prompts, not both")
        for row in generate.sample_prompts(args.workdir, generate.read_prompts(args.prompts),
                                           args.max_new_tokens, **options):
          print(json.dumps(row, ensure_ascii=False), flush=True)
      else:
        rows = generate.sample_prompts(args.workdir, [args.prompt], args.max_new_tokens,
                                       **options)
        print("\n\n".join(args.prompt + row["generation"] for row in rows))
      print("pretrax: next: --temperature, --top_k, --top_p and --seed change the sampling; "
            "--step samples an earlier checkpoint", file=sys.stderr)
    elif args.command == "generate":
      _generate(args)
    elif args.command == "export":
      from pretrax.interop import export
      write = export.export_hf if args.format == "hf" else export.export_params
      result = write(args.workdir, args.output, args.step)
      if args.format == "hf":
        print(f"pretrax: next: transformers.{result['architecture']}.from_pretrained("
              f"{args.output!r}) loads it (README: load an export)", file=sys.stderr)
      else:
        print(f"pretrax: next: pretrax eval --workdir={args.output} (also score, sample)",
              file=sys.stderr)
      print(json.dumps(result))
    elif args.command == "import":
      from pretrax.interop import export
      print(json.dumps(export.import_hf(args.input, args.workdir, args.tokenizer)))
    elif args.command == "tokenizer":
      _tokenizer_train(args)
  except (CheckpointError, RunDirError, FloatingPointError) as e:
    print(f"pretrax: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"pretrax: {args.command} interrupted", file=sys.stderr)
    return 130
  except BrokenPipeError:  # the reader of stdout left (`pretrax compare ... | head`)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
    return 141
  except (InputError, FileNotFoundError) as e:
    # Input the user can fix gets one line; anything else is a bug and keeps its traceback.
    if os.environ.get("PRETRAX_TRACEBACK"):
      raise
    print(f"pretrax: error: {e}\n(set PRETRAX_TRACEBACK=1 to see where it was raised)",
          file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
