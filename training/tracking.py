"""Sends each run's metrics to experiment trackers: TensorBoard event files in WORKDIR/tensorboard/
(unless config.train.tensorboard=false) and Weights & Biases (config.train.wandb_project).

Every numeric value of a metrics.jsonl record goes to the trackers at the record's step, under a
tag that groups it: `eval_X` as `eval/X`, everything else as `train/X` (bools as 0/1; lists and
strings, such as `data_changes`, are left out; TensorBoard holds float32). The run's
hyper-parameters are the flattened resolved config (`model.num_layers`, tuples as JSON
strings). Only process 0 writes.
"""

import json
import os
import sys
import time
import uuid

import jax

from pretrax.data import files
from pretrax.training import config as config_lib
from pretrax.training.config import Config, ConfigError

TENSORBOARD_DIR = "tensorboard"
WANDB_ID = "wandb_id"  # the W&B run id, kept so a resumed run continues the same W&B run
WANDB_DIR = "wandb"    # W&B's own files (wandb.init(dir=WORKDIR) makes WORKDIR/wandb/)
# The metrics the HParams dashboard shows beside each run's hyper-parameters.
HPARAM_METRICS = ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy",
                  "eval/perplexity", "eval/bits_per_byte")


def tag(key: str) -> str:
  """The tracker tag of a metrics.jsonl key: eval_loss -> eval/loss, loss -> train/loss."""
  return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"


def scalars(record: dict) -> dict[str, float]:
  """The numeric values of a metrics record (all but `step`) under their tags."""
  return {tag(k): float(v) for k, v in record.items()
          if k != "step" and isinstance(v, (int, float))}  # bool is an int: 0/1


def hparams(config: Config) -> dict[str, bool | int | float | str]:
  """The resolved config flattened to `section.field` keys; tuples (and None) as JSON strings."""
  return {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
          for key, value in config_lib.to_flat_dict(config).items()}


class TensorBoardWriter:
  """Event files in WORKDIR/tensorboard/: the hyper-parameters once per invocation, then each
  record's scalars, one event per record.

  The scalars are float32 (`simple_value`), as TensorBoard shows them: its default reader (the
  Rust data server, `--load_fast=auto`) drops float64 scalar tensors, so a run written in
  float64 would show no scalars at all. metrics.jsonl keeps the exact values.
  """

  def __init__(self, config: Config, workdir: str, start_step: int):
    tensorboardX, tb_summary = _import_tensorboardx()
    # Readers hide the events a previous invocation wrote past the step this one resumes from
    # (a SessionLog.START at start_step + 1), so re-trained steps do not show twice. The
    # nanosecond suffix keeps two invocations in one second from sharing a file name (and
    # overwriting it), and sorts their files in the order they were written.
    self.writer = tensorboardX.SummaryWriter(
        os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1,
        filename_suffix=f".{time.time_ns()}")
    experiment, session_start, _ = tb_summary.hparams(hparams(config),
                                                      dict.fromkeys(HPARAM_METRICS))
    self.writer.file_writer.add_summary(experiment)
    self.writer.file_writer.add_summary(session_start)

  def write(self, record: dict) -> None:
    from tensorboardX.proto import summary_pb2
    values = [summary_pb2.Summary.Value(tag=name, simple_value=value)
              for name, value in scalars(record).items()]
    self.writer.file_writer.add_summary(summary_pb2.Summary(value=values), record["step"])

  def close(self) -> None:
    self.writer.close()  # writes what is queued, then closes the file


def _import_tensorboardx():
  """tensorboardX and its summary module, without torch: tensorboardX imports torch when it is
  installed, only to accept its tensors (2 s of every run's start-up); pretrax gives it floats."""
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    import tensorboardX
    from tensorboardX import summary
  finally:
    if blocked:
      del sys.modules["torch"]
  return tensorboardX, summary


class WandbRun:
  """A Weights & Biases run named after the workdir; resuming the workdir resumes the W&B run.
  WANDB_MODE=offline (W&B's own variable) keeps it on disk, in WORKDIR/wandb/."""

  def __init__(self, config: Config, workdir: str):
    project = config.train.wandb_project
    try:
      import wandb  # an optional extra: only runs that log to W&B need it
    except ImportError:
      raise ConfigError(
          f"config.train.wandb_project={project!r} needs the wandb package: "
          "pip install -e \".[wandb]\" (or leave config.train.wandb_project empty)") from None
    name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    self.run = wandb.init(project=project, name=name, dir=workdir, config=hparams(config),
                          id=_wandb_id(workdir), resume="allow")

  def write(self, record: dict) -> None:
    step = record["step"]
    if step < self.run.step:  # W&B ignores steps below its last one (a resumed run's re-trained
      return                  # steps); skipping them spares a warning per record
    self.run.log(scalars(record), step=step)

  def close(self) -> None:
    self.run.finish()


def _wandb_id(workdir: str) -> str:
  path = os.path.join(workdir, WANDB_ID)
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  run_id = uuid.uuid4().hex[:16]
  files.atomic_write(path, run_id + "\n")
  return run_id


class Trackers:
  """The trackers config.train asks for (process 0 only; none elsewhere): `write(record)` with
  each metrics record, `close()` when training ends, however it ends."""

  def __init__(self, config: Config, workdir: str, start_step: int):
    self.trackers = []
    if jax.process_index() != 0:
      return
    if config.train.wandb_project:  # first: a missing wandb fails before any file is written
      self.trackers.append(WandbRun(config, workdir))
    if config.train.tensorboard:
      self.trackers.append(TensorBoardWriter(config, workdir, start_step))

  def write(self, record: dict) -> None:
    for tracker in self.trackers:
      tracker.write(record)

  def close(self) -> None:
    trackers, self.trackers = self.trackers, []
    for tracker in trackers:
      tracker.close()
