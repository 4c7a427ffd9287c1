"""Orbax checkpoints of the train state and the data-iterator state: saving, verifying, restoring.

WORKDIR/checkpoints/N/ holds `state` (params, optimizer state, step counters) and `data` (the
Grain iterator state of each process), plus pretrax_manifest.json: size and CRC32 of every file,
written once the save is complete, checked before the checkpoint is read. The rest of a run
directory is described in training/run_dir.py.
"""

import json
import logging
import os
import time
import zlib

import grain
import jax
import orbax.checkpoint as ocp

from pretrax.data import files
from pretrax.training import distributed
from pretrax.training.config import CheckpointConfig


log = logging.getLogger("pretrax")

MANIFEST = "pretrax_manifest.json"


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one could not be written; the message says which and what to do."""


def _digest(path: str) -> tuple[int, int]:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return os.path.getsize(path), crc


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != MANIFEST]
  return sorted(out)


def write_manifest(step_dir: str) -> None:
  """Records size and CRC32 of every file of a complete checkpoint (atomically)."""
  manifest = {name: _digest(os.path.join(step_dir, name)) for name in _files(step_dir)}
  files.atomic_write_json(os.path.join(step_dir, MANIFEST), manifest)


def verify_manifest(step_dir: str) -> str | None:
  """None if the checkpoint matches its manifest (or has none yet), else what is wrong."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    return f"{path}: unreadable manifest ({e})"
  for name, (size, crc) in sorted(manifest.items()):
    file = os.path.join(step_dir, name)
    if not os.path.exists(file):
      return f"{file}: missing"
    actual_size, actual_crc = _digest(file)
    if actual_size != size:
      return f"{file}: {actual_size} bytes, {size} when written (truncated or extended)"
    if actual_crc != crc:
      return f"{file}: contents differ from when it was written (CRC32 mismatch)"
  return None


class Checkpointer:
  """Async, keep-N saves of {state, data iterator} under WORKDIR/checkpoints/STEP."""

  def __init__(self, workdir: str, config: CheckpointConfig, *, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.config = config
    self.read_only = read_only
    self.manager = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    # Readers (eval, score, sample) never create, save or delete anything.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if self.read_only else self.config.keep,
        enable_async_checkpointing=self.config.async_save and not self.read_only,
        create=not self.read_only)
    return ocp.CheckpointManager(self.directory, options=options)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def write_manifests(self) -> None:
    """Writes the manifest of every complete checkpoint that lacks one (process 0)."""
    if self.read_only or jax.process_index() != 0 or self.manager.is_saving_in_progress():
      return
    for step in self.manager.all_steps():
      if not os.path.exists(os.path.join(self.step_dir(step), MANIFEST)):
        write_manifest(self.step_dir(step))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None) -> None:
    """Starts an (async) save; an error of this or the previous save is a CheckpointError."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
      self.write_manifests()
    except Exception as e:
      raise self._write_error(step, e) from e

  def _write_error(self, step: int, error: Exception) -> CheckpointError:
    good = [s for s in self.manager.all_steps() if s != step]
    kept = f"the latest complete one is step {max(good)}" if good else "none was complete yet"
    return CheckpointError(
        f"writing the checkpoint of step {step} under {self.directory} failed: "
        f"{type(error).__name__}: {error}. Training stopped; earlier checkpoints are untouched "
        f"({kept}). Free disk space or fix the directory, then rerun the same command.")

  def restore_latest(self, abstract_state, data_iterator=None):
    """(step, state) of the newest checkpoint that verifies and loads, or (None, None) if there
    is none at all. Corrupt ones are reported, moved to checkpoints_corrupt/ and skipped; if every
    checkpoint is corrupt this is a CheckpointError, never a silent fresh start."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    problems = []
    for step in steps:
      problem = verify_manifest(self.step_dir(step))
      if problem is None:
        if data_iterator is not None:  # a usage error, not corruption: nothing is moved
          data_dir = os.path.join(self.step_dir(step), "data")
          distributed.check_data_process_count(data_dir)
        try:
          return step, self.restore(step, abstract_state, data_iterator)
        except Exception as e:  # anything the reader trips over: this checkpoint is unusable
          problem = f"{self.step_dir(step)}: cannot be read ({type(e).__name__}: {e})"
      problems.append(f"step {step}: {problem}")
      log.warning("checkpoint of step %d is corrupt: %s; falling back to an earlier one", step,
                  problem)
      print(f"WARNING: checkpoint of step {step} is corrupt: {problem}; falling back to an "
            "earlier checkpoint", flush=True)
      self._quarantine(step)
    if problems:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory}: " + "; ".join(problems) +
          ". Refusing to start a fresh run over an existing one: move the run directory away to "
          "start over, or restore a good copy of a checkpoint.")
    return None, None

  def _quarantine(self, step: int) -> None:
    """Moves a corrupt checkpoint out of the manager's sight, keeping it for inspection."""
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt",
                            f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(self.step_dir(step), target)
    self.manager.close()
    self.manager = self._manager()

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores `state` (shaped and sharded like `abstract_state`) and, in place, the iterator.

    A checkpoint without a data item (e.g. imported weights) leaves the iterator at its start.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None and os.path.isdir(os.path.join(self.directory, str(step), "data")):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_params(self, step: int, abstract_params):
    """Restores only the parameters (for eval, score, sample): no optimizer state is read."""
    abstract = {"params": abstract_params}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)))
    return restored["state"]["params"]

  def wait(self) -> None:
    """Blocks until pending saves are on disk (and have manifests)."""
    step = self.manager.latest_step()
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      raise self._write_error(step, e) from e
    self.write_manifests()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
