"""A run directory: opening it for training (writable, locked) or reading (a run's config).

A run directory holds:
  config.json        the fully resolved config
  tokenizer.model    (SentencePiece) or tokenizer.json (byte tokenizer)
  labels.json        fine-tuned classifiers: the class of each label id
  checkpoints/N/     see training/checkpointing.py
  checkpoints_corrupt/N-TIME/     checkpoints proven corrupt, moved aside (never deleted)
  checkpoints_unverified/N-TIME/  checkpoints without a manifest that were not used, moved aside
  metrics.jsonl      one JSON object per log step
  tensorboard/       TensorBoard event files of the metrics and the config (training/tracking.py)
  wandb_id, wandb/   with train.wandb_project: the W&B run's id (a resume continues that run)
                     and W&B's local files
  previous_runs/TIME/  what `train --restart` set aside: a complete run directory of its own
  .lock              held by the run training in this directory

A run directory that has ever trained is resumed or refused, never silently started over.
"""

import fcntl
import json
import os
import shutil
import socket
import time

import jax

from pretrax.data import seq2seq_pipeline, sources, tokenizers
from pretrax.training import config as config_lib, distributed, tracking
from pretrax.training.config import Config, ConfigError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SET_ASIDE = ("checkpoints_corrupt", "checkpoints_unverified")
PREVIOUS_RUNS = "previous_runs"
TOKENIZER_TRAIN_DOCUMENTS = 200_000  # documents read to train a tokenizer when data.tokenizer=train


class RunDirError(RuntimeError):
  """A run directory that cannot be used (in use by another run, ...); the message says why."""


def check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be written: {e.strerror or e}") from None


class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock for the duration of a run (process 0 only).

  The operating system drops it when the process dies, even by SIGKILL, so a crash never leaves a
  stale lock behind.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self.file = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    self.file = open(self.path, "a+")
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      self.file.close()
      raise RunDirError(f"{os.path.dirname(self.path) or '.'} is in use by another pretrax "
                        f"run ({holder}); wait for it to finish or use another --workdir")
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    self.file.flush()
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()


def read_config(workdir: str, flag: str = "--workdir") -> Config:
  """The config.json of the run in `workdir`; `flag` names the argument in errors."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{flag}={workdir} is not a pretrax run directory: no {CONFIG} "
                            "(train one with `pretrax train --workdir=...`)")
  try:
    return config_lib.load_json(path)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{flag}={workdir}: cannot read {path}: {e}") from None


def saved_config(workdir: str) -> Config | None:
  """The config.json of a run being resumed, or None for a new one."""
  return read_config(workdir) if os.path.exists(os.path.join(workdir, CONFIG)) else None


def write_config(config: Config, workdir: str) -> None:
  if jax.process_index() == 0:
    config_lib.save_json(config, os.path.join(workdir, CONFIG))


# What a run directory's tokenizer is saved as (one of them): SentencePiece, byte, Hugging Face.
TOKENIZER_FILES = (tokenizers.MODEL_FILENAME, tokenizers.JSON_FILENAME, tokenizers.HF_DIRNAME)


def has_tokenizer(workdir: str) -> bool:
  return any(os.path.exists(os.path.join(workdir, f)) for f in TOKENIZER_FILES)


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in WORKDIR/checkpoints (a save in progress has a
  temporary name until it is committed)."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def history(workdir: str) -> list[str]:
  """What shows that `workdir` has trained before: metrics, checkpoints, checkpoints set aside."""
  found = []
  path = os.path.join(workdir, METRICS)
  if os.path.isfile(path) and os.path.getsize(path):
    steps = []
    with open(path) as f:
      for line in f:
        try:
          steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
          continue
    found.append(f"{METRICS} up to step {max(steps, default=0)}")
  steps = checkpoint_steps(workdir)
  if steps:
    found.append(f"checkpoints of steps {', '.join(map(str, steps))}")
  for name in SET_ASIDE:
    directory = os.path.join(workdir, name)
    if os.path.isdir(directory) and os.listdir(directory):
      found.append(f"{len(os.listdir(directory))} checkpoint(s) in {name}/")
  return found


def check_resumable(workdir: str) -> None:
  """Refuses a workdir that has trained before but holds no checkpoint to resume from: starting
  over from step 0 takes `--restart`."""
  if checkpoint_steps(workdir):
    return
  found = history(workdir)
  if found:
    raise RunDirError(
        f"{workdir} has trained before ({'; '.join(found)}) but holds no checkpoint to resume "
        "from. Refusing to start over from step 0 silently: pass --restart to start a new run "
        f"there (the previous run's files are moved to {os.path.join(workdir, PREVIOUS_RUNS)}/, "
        "not deleted), or use another --workdir.")


def set_aside_previous_run(workdir: str) -> str | None:
  """`train --restart`: moves the previous run's files into WORKDIR/previous_runs/TIME/ (itself a
  run directory eval can read) and returns that path; None if there was nothing to move."""
  names = [CONFIG, METRICS, "checkpoints", *SET_ASIDE, *TOKENIZER_FILES, "labels.json",
           tracking.TENSORBOARD_DIR, tracking.WANDB_ID, tracking.WANDB_DIR]
  present = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  target = None
  if jax.process_index() == 0 and present:
    target = os.path.join(workdir, PREVIOUS_RUNS, time.strftime("%Y%m%d-%H%M%S"))
    while os.path.exists(target):
      target += "_"
    os.makedirs(target)
    for name in present:
      shutil.move(os.path.join(workdir, name), os.path.join(target, name))
  distributed.sync("pretrax previous run set aside")
  return target


def _tokenizer_change(config: Config, saved: Config | None,
                      own: tokenizers.Tokenizer) -> str | None:
  """None if config.data.tokenizer names `own` (the workdir's tokenizer), else what it names."""
  data = config.data
  if data.tokenizer == "train":  # the workdir's, if it was trained with these settings
    settings = ("tokenizer", "tokenizer_vocab_size", "tokenizer_model_type")
    if saved is not None and all(getattr(saved.data, k) == getattr(data, k) for k in settings):
      return None
    return (f"a newly trained one (data.tokenizer=train, vocab {data.tokenizer_vocab_size}, "
            f"{data.tokenizer_model_type})")
  wanted = tokenizers.load_tokenizer(data.tokenizer)
  if wanted.describe() == own.describe():
    return None
  return f"{data.tokenizer!r} ({_describe(wanted)})"


def _describe(tokenizer: tokenizers.Tokenizer) -> str:
  if tokenizer.kind == "byte":
    return "bytes"
  name = "Hugging Face" if tokenizer.kind == "huggingface" else "SentencePiece"
  return f"{name}, vocab {tokenizer.vocab_size}, sha256 {tokenizer.describe()['sha256'][:12]}"


def prepare_tokenizer(config: Config, workdir: str, training_texts=None) -> tokenizers.Tokenizer:
  """The run's tokenizer: the one config.data.tokenizer names (data.tokenizer=train: trained by
  process 0 first, on the training split of config.data.source, or on what `training_texts()`
  returns: (an iterable of texts, what they are)), copied into the workdir.

  A workdir with checkpoints keeps its tokenizer, and a config naming a different one is refused;
  before any checkpoint exists, the configured one replaces whatever the workdir holds.
  """
  if has_tokenizer(workdir):
    own = tokenizers.load_from_directory(workdir)
    change = _tokenizer_change(config, saved_config(workdir), own)
    if change is None:
      return own
    if checkpoint_steps(workdir):
      same = tokenizers.saved_spec(own, workdir)
      raise ConfigError(
          f"config.data.tokenizer: {workdir} was trained with its own tokenizer ({_describe(own)})"
          f", and this config names {change}. Its checkpoints work only with the tokenizer they "
          f"were trained with: set --config.data.tokenizer={same}, or start a new run with "
          "another --workdir (or --restart).")
    if jax.process_index() == 0:  # no checkpoint yet: the configured one replaces it
      for name in TOKENIZER_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)
    distributed.sync("pretrax old tokenizer removed")
  spec = config.data.tokenizer
  if spec == "train":
    if jax.process_index() == 0:
      if training_texts is None:
        texts = sources.iter_texts(config.data, config.data.train_split,
                                   max_documents=TOKENIZER_TRAIN_DOCUMENTS)
        what = config.data.source
      else:
        texts, what = training_texts()
      print(f"Training a {config.data.tokenizer_model_type} SentencePiece tokenizer "
            f"(vocab {config.data.tokenizer_vocab_size}) on {what} ...", flush=True)
      tokenizers.train_sentencepiece(
          texts, os.path.join(workdir, "tokenizer"), vocab_size=config.data.tokenizer_vocab_size,
          model_type=config.data.tokenizer_model_type)
      vocab = os.path.join(workdir, "tokenizer.vocab")
      if os.path.exists(vocab):
        os.remove(vocab)
    distributed.sync("pretrax tokenizer trained")
    return tokenizers.load_from_directory(workdir)
  tokenizer = tokenizers.load_tokenizer(spec)
  if jax.process_index() == 0:
    tokenizer.save(workdir)
  return tokenizer


def resolve_vocab(config: Config, tokenizer: tokenizers.Tokenizer) -> Config:
  """Fills model.vocab_size from the tokenizer (and span_corruption's data.extra_ids sentinels),
  rounded up to 128, and checks it is big enough."""
  needed = seq2seq_pipeline.sentinel_vocab(config.data, tokenizer)
  what = ("the tokenizer's vocabulary" if needed == tokenizer.vocab_size else
          f"the tokenizer's vocabulary and data.extra_ids={config.data.extra_ids} sentinels")
  if config.model.vocab_size == 0:
    config.model.vocab_size = -(-needed // 128) * 128
  elif config.model.vocab_size < needed:
    raise ConfigError(f"config.model.vocab_size={config.model.vocab_size} is smaller than "
                      f"{what} ({needed}); set it to 0 (automatic) or at least {needed}")
  return config


# Settings that may change when a run is resumed: how long it runs and the learning-rate
# schedule over that length, the cadence of logs, evals and checkpoints, where metrics are sent
# (TensorBoard, W&B), the mesh, and paths to the same computation (attention kernels,
# rematerialization, scanning, gradient accumulation, loss chunking, compute dtype). Everything
# else shapes the parameters or the optimizer state, or changes what training computes, and is
# refused; the data pipeline is checked against the checkpoint's data fingerprint
# (training/checkpointing.py).
RESUMABLE_CHANGES = frozenset({
    "train.steps", "train.log_every", "train.eval_every", "train.eval_steps", "train.peak_flops",
    "train.compile_cache_dir", "train.nonfinite", "train.max_nonfinite_skips",
    "train.grad_accum_steps", "train.loss_chunk_size", "train.tensorboard", "train.wandb_project",
    "optimizer.learning_rate", "optimizer.warmup_steps", "optimizer.decay",
    "optimizer.min_lr_ratio",
    "checkpoint.every", "checkpoint.keep", "checkpoint.async_save",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.axis_rules",
    "model.attention_impl", "model.attention_block", "model.remat", "model.scan_layers",
    "model.dtype",
    "finetune.init",  # read at the start only; a resumed run restores its own weights
})
DATA_POSITION_FIELDS = ("train.batch_size", "train.seed")  # and data.*: in the data fingerprint


def check_resume_config(saved: Config, config: Config, workdir: str) -> list[str]:
  """Refuses to resume `workdir` with settings its checkpoints cannot continue under, naming
  each; returns the allowed changes ("train.steps: 6 -> 8") for the log."""
  old, new = config_lib.to_flat_dict(saved), config_lib.to_flat_dict(config)
  allowed, refused = [], []
  for key in old:
    if key.startswith("data.") or key in DATA_POSITION_FIELDS or old[key] == new[key]:
      continue
    if key in RESUMABLE_CHANGES:
      allowed.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    else:
      refused.append(f"{key}: saved {old[key]!r}, requested {new[key]!r}")
  if refused:
    raise ConfigError(
        f"{workdir} holds a run made with other settings; refusing to resume it with "
        f"{'; '.join(refused)}. These shape the model or the optimizer state, or change what "
        "training computes, so its checkpoints cannot continue under them: restore them, or "
        "start a new run with another --workdir (or --restart to set this one aside). What may "
        "change on resume is listed in README (Guarantees: resuming).")
  return allowed
