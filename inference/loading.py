"""Loading a trained run for inference: its config, tokenizer, task and parameters."""

import dataclasses
import os
import sys
import time

import jax
from flax import nnx

from pretrax.data import tokenizers
from pretrax.data.errors import InputError
from pretrax.training import checkpointing, compile_cache, run_dir, tasks
from pretrax.training.config import Config, ConfigError


@dataclasses.dataclass
class Run:
  """A trained run loaded for inference: its config, tokenizer, task, model and parameters."""
  config: Config
  tokenizer: tokenizers.Tokenizer
  task: tasks.Task
  graphdef: nnx.GraphDef
  params: dict
  step: int

  def model(self):
    return nnx.merge(self.graphdef, self.params)


# A reader racing a run that trains in the same directory: how often it moves on to the newest
# checkpoint when the one it reads is deleted (config.checkpoint.keep) before it is done.
READ_ATTEMPTS = 5


class _Deleted(Exception):
  """The checkpoint being read was deleted by the run writing the directory."""


def _deleted_by_trainer(checkpointer: checkpointing.Checkpointer, step: int, keep: int,
                        wait_s: float = 10.0) -> bool:
  """Whether checkpoint `step` was deleted by the run writing the directory: it is gone, or it
  is doomed (the writer keeps the newest `keep`, and that many newer ones are complete, named by
  their step) and goes within `wait_s`. A doomed one that stays is damaged, not deleted."""
  path = checkpointer.step_dir(step)
  if not os.path.isdir(path):
    return True
  newer = [n for n in run_dir.checkpoint_steps(checkpointer.workdir) if n > step]
  if len(newer) < keep:
    return False
  deadline = time.monotonic() + wait_s
  while os.path.isdir(path):
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def _usable_step(checkpointer: checkpointing.Checkpointer, workdir: str, step: int | None,
                 keep: int) -> int:
  """`step` (default: the newest) if its checkpoint verifies; corrupt ones are reported."""
  steps = checkpointer.all_steps()
  if not steps and step is not None and keep:  # a run saving its next one has just deleted it
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step}, nor any other complete "
                            f"one at the moment; the run keeps only the newest {keep} "
                            f"(config.checkpoint.keep={keep})")
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint under {checkpointer.directory}")
  if step is not None and step not in steps:
    hint = (f"; the run keeps only the newest {keep} (config.checkpoint.keep={keep})"
            if step < max(steps) else "")
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step}; available: "
                            f"{sorted(steps)}{hint}")
  for candidate in ([step] if step is not None else sorted(steps, reverse=True)):
    try:
      problem = checkpointing.verify_manifest(checkpointer.step_dir(candidate))
    except OSError as e:  # a file went away between listing and reading
      problem = f"{checkpointer.step_dir(candidate)}: cannot be read ({e})"
    if problem is None:
      if not checkpointing.has_manifest(checkpointer.step_dir(candidate)):
        print(f"note: checkpoint of step {candidate} has no manifest yet (just committed, or its "
              "run stopped before verifying it): read unverified", file=sys.stderr)
      return candidate
    if _deleted_by_trainer(checkpointer, candidate, keep):
      raise _Deleted(candidate)
    print(f"WARNING: checkpoint of step {candidate} is corrupt: {problem}", file=sys.stderr)
  raise checkpointing.CheckpointError(f"no usable checkpoint in {checkpointer.directory} (see "
                                      "the warnings above)")


def _deleted_error(workdir: str, step: int | None, keep: int) -> checkpointing.CheckpointError:
  what = (f"the checkpoint of step {step} was" if step is not None else
          f"the newest checkpoint was, {READ_ATTEMPTS} times in a row,")
  return checkpointing.CheckpointError(
      f"{what} deleted while being read: the run training in {workdir} keeps only the newest "
      f"{keep} (config.checkpoint.keep={keep}) and removes older ones as it saves. Retry, or "
      "pass a --step that is kept (or train with a larger config.checkpoint.keep).")


def _drop_abandoned_read_errors(previous):
  """An unraisable-exception hook around `previous`. When a restore fails (a checkpoint deleted
  mid-read), orbax closes its event loop while TensorStore still completes the other reads, and
  each of those raises into nowhere ("Event loop is closed", or an orbax read coroutine's error
  as it is closed): results already abandoned, printed as tracebacks. Drops those only."""

  def hook(unraisable):
    error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
    orbax_read = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
    if not (closed_loop or orbax_read):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  return hook


def _open_checkpointer(workdir: str, config: Config) -> checkpointing.Checkpointer:
  """A read-only Checkpointer; it lists the steps on disk when it is made."""
  for attempt in range(READ_ATTEMPTS):
    try:
      return checkpointing.Checkpointer(workdir, config.checkpoint, read_only=True)
    except FileNotFoundError:  # a step the trainer deleted while the manager listed it
      if attempt + 1 == READ_ATTEMPTS:
        raise


def load_run(workdir: str, step: int | None = None) -> Run:
  """Loads config, tokenizer and the parameters of checkpoint `step` (default: latest), on one
  device.

  A run may be training in `workdir` meanwhile: if the newest checkpoint is deleted while it is
  read, the then newest is read instead; if the requested `step` is, that is a CheckpointError.
  """
  if step is not None and step < 0:
    raise InputError(f"--step={step}: a checkpoint's step is >= 0 (omit it for the latest)")
  config = run_dir.read_config(workdir)
  compile_cache.enable(config.train.compile_cache_dir)
  tokenizer = tokenizers.load_from_directory(workdir)
  task = tasks.task_class(config)(config, tokenizer, workdir)
  graphdef, abstract_state = task.abstract_model()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_params = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device),
      nnx.to_pure_dict(abstract_state))
  keep = config.checkpoint.keep
  if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):
    sys.unraisablehook = _drop_abandoned_read_errors(sys.unraisablehook)
  for _ in range(READ_ATTEMPTS):
    checkpointer = _open_checkpointer(workdir, config)
    try:
      chosen = _usable_step(checkpointer, workdir, step, keep)
      try:
        params = checkpointer.restore_params(chosen, abstract_params)
      except Exception:  # whatever orbax trips over when files vanish mid-read
        if not _deleted_by_trainer(checkpointer, chosen, keep):
          raise
        raise _Deleted(chosen) from None
    except _Deleted:
      if step is not None:
        raise _deleted_error(workdir, step, keep) from None
      continue
    finally:
      checkpointer.close()
    return Run(config=config, tokenizer=tokenizer, task=task, graphdef=graphdef, params=params,
               step=chosen)
  raise _deleted_error(workdir, None, keep)


def require_language_model(run: Run, command: str, workdir: str) -> None:
  """`score` and `sample` need a pretrained causal language model."""
  if run.config.finetune.task:
    raise ConfigError(f"{workdir} is a fine-tuned {run.config.finetune.task} run: `pretrax eval` "
                      f"evaluates it; {command} needs a pretrained language model")
  if run.config.model.family != "gpt":
    raise ConfigError(f"pretrax {command} needs a causal language model; {workdir} holds a "
                      f"{run.config.model.family!r} model (use `pretrax eval` for its metrics)")
