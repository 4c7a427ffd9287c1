"""A run directory: opening it for training (writable, locked) or reading (a run's config).

A run directory holds:
  config.json        the fully resolved config
  tokenizer.model    (SentencePiece) or tokenizer.json (byte tokenizer)
  labels.json        fine-tuned classifiers: the class of each label id
  checkpoints/N/     see training/checkpointing.py
  checkpoints_corrupt/N/  checkpoints found corrupt, moved aside (never deleted)
  metrics.jsonl      one JSON object per log step
  .lock              held by the run training in this directory
"""

import fcntl
import os
import socket
import time

import jax

from pretrax.data import sources, tokenizers
from pretrax.training import config as config_lib
from pretrax.training.config import Config, ConfigError

CONFIG = "config.json"
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


def has_tokenizer(workdir: str) -> bool:
  return any(os.path.exists(os.path.join(workdir, f))
             for f in (tokenizers.MODEL_FILENAME, tokenizers.JSON_FILENAME))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def prepare_tokenizer(config: Config, workdir: str) -> tokenizers.Tokenizer:
  """The run's tokenizer: the workdir's own when resuming, else the configured one, copied in
  (config.data.tokenizer=train: trained on the training split by process 0 first)."""
  if has_tokenizer(workdir):
    return tokenizers.load_from_directory(workdir)
  spec = config.data.tokenizer
  if spec == "train":
    if jax.process_index() == 0:
      print(f"Training a {config.data.tokenizer_model_type} SentencePiece tokenizer "
            f"(vocab {config.data.tokenizer_vocab_size}) on {config.data.source} ...", flush=True)
      texts = sources.iter_texts(config.data, config.data.train_split,
                                 max_documents=TOKENIZER_TRAIN_DOCUMENTS)
      tokenizers.train_sentencepiece(
          texts, os.path.join(workdir, "tokenizer"), vocab_size=config.data.tokenizer_vocab_size,
          model_type=config.data.tokenizer_model_type)
      vocab = os.path.join(workdir, "tokenizer.vocab")
      if os.path.exists(vocab):
        os.remove(vocab)
    _sync("pretrax tokenizer trained")
    return tokenizers.load_from_directory(workdir)
  tokenizer = tokenizers.load_tokenizer(spec)
  if jax.process_index() == 0:
    tokenizer.save(workdir)
  return tokenizer


def resolve_vocab(config: Config, tokenizer: tokenizers.Tokenizer) -> Config:
  """Fills model.vocab_size from the tokenizer (rounded up to 128) and checks it is big enough."""
  if config.model.vocab_size == 0:
    config.model.vocab_size = -(-tokenizer.vocab_size // 128) * 128
  elif config.model.vocab_size < tokenizer.vocab_size:
    raise ConfigError(f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
                      f"tokenizer's vocabulary ({tokenizer.vocab_size}); set it to 0 (automatic) "
                      f"or at least {tokenizer.vocab_size}")
  return config


def check_same_model(saved: Config, config: Config, workdir: str) -> None:
  """Refuses to resume `workdir` with a model config other than the one it was started with."""
  differing = [f"model.{k}: saved {v!r}, requested {getattr(config.model, k)!r}"
               for k, v in config_lib.to_dict(saved)["model"].items()
               if getattr(config.model, k) != v]
  if differing:
    raise ConfigError(f"{workdir} holds a run with a different model; refusing to resume it "
                      f"with this config ({'; '.join(differing)}). Use a new --workdir.")
