"""Orbax checkpoints of the train state and the data-iterator state: saving, verifying, restoring.

WORKDIR/checkpoints/N/ holds `state` (params, optimizer state, step counters), the data position
and `fingerprint` (what that data position refers to: the data settings, the corpus as built,
the tokenizer), plus pretrax_manifest.json: size and CRC32 of every file, written as soon as the
save is committed, checked before the checkpoint is read. The data position is
`data_position` (one JSON object, the same on every process: global batches by row index,
data/global_batches.py) or `data` (the Grain iterator state of each process, for iterators
without a `position()`).

On resume a checkpoint is one of three things. Verified (its manifest matches): used; if it then
does not fit the run, that is a configuration error and nothing is moved. Corrupt (its manifest
disagrees): reported, moved to checkpoints_corrupt/, and the previous one is tried. Unverified (no
manifest: the process died between the commit and the manifest): never trusted silently; an older
verified checkpoint is preferred, and the unverified ones after it are moved to
checkpoints_unverified/. The rest of a run directory is described in training/run_dir.py.
"""

import dataclasses
import json
import logging
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from pretrax.data import files
from pretrax.data.errors import InputError
from pretrax.training import distributed
from pretrax.training.config import CheckpointConfig, ConfigError


log = logging.getLogger("pretrax")

MANIFEST = "pretrax_manifest.json"
CORRUPT = "checkpoints_corrupt"       # proven corrupt: the manifest disagrees
UNVERIFIED = "checkpoints_unverified"  # no manifest, and not used
POSITION = "data_position"  # the item of a global data position (data/global_batches.py)


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one could not be written; the message says which and what to do."""


def _first_line(error: Exception, limit: int = 300) -> str:
  line = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return line if len(line) <= limit else line[:limit] + " ..."


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names if n != MANIFEST]
  return sorted(out)


def write_manifest(step_dir: str) -> None:
  """Records size and CRC32 of every file of a complete checkpoint (atomically)."""
  manifest = {name: files.size_and_crc32(os.path.join(step_dir, name))
              for name in _files(step_dir)}
  files.atomic_write_json(os.path.join(step_dir, MANIFEST), manifest)


def has_manifest(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, MANIFEST))


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
    actual_size, actual_crc = files.size_and_crc32(file)
    if actual_size != size:
      return f"{file}: {actual_size} bytes, {size} when written (truncated or extended)"
    if actual_crc != crc:
      return f"{file}: contents differ from when it was written (CRC32 mismatch)"
  return None


def fingerprint_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """`KEY: saved X, now Y` for every entry of two data fingerprints that differs."""
  changes = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key, "(absent)"), current.get(key, "(absent)")
    if isinstance(old, dict) and isinstance(new, dict):
      changes += fingerprint_changes(old, new, f"{prefix}{key}.")
    elif old != new:
      changes.append(f"{prefix}{key}: saved {old!r}, now {new!r}")
  return changes


class DataChangedError(ConfigError):
  """Resuming would apply a saved data position to different data."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_changes: list[str]  # non-empty when the data stream was restarted on changed data


class Checkpointer:
  """Async, keep-N saves of {state, data iterator} under WORKDIR/checkpoints/STEP."""

  def __init__(self, workdir: str, config: CheckpointConfig, *, read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.config = config
    self.read_only = read_only
    self.manager = self._manager()
    self._unmanifested = False  # a save was started whose manifest is not written yet

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
    """Writes the manifest of every committed checkpoint that lacks one (process 0), unless a
    save is still in progress (its checkpoint is not committed yet)."""
    if self.read_only or jax.process_index() != 0 or self.manager.is_saving_in_progress():
      return
    for step in self.manager.all_steps():
      step_dir = self.step_dir(step)
      if os.path.isdir(step_dir) and not has_manifest(step_dir):
        write_manifest(step_dir)
    self._unmanifested = False

  def poll(self) -> None:
    """Called every step: the manifest of a save that has just been committed, at once."""
    if self._unmanifested:
      self.write_manifests()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, fingerprint: dict | None = None) -> None:
    """Starts an (async) save; an error of this or the previous save is a CheckpointError."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      if hasattr(data_iterator, "position"):
        items[POSITION] = ocp.args.JsonSave(data_iterator.position())
      else:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
      if fingerprint is not None:
        items["fingerprint"] = ocp.args.JsonSave(fingerprint)
    try:
      # Orbax waits for the previous save before starting this one anyway: wait here, so the
      # previous checkpoint gets its manifest first.
      self.manager.wait_until_finished()
      self.write_manifests()
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
      self._unmanifested = True
    except Exception as e:
      raise self._write_error(step, e) from e

  def _write_error(self, step: int, error: Exception) -> CheckpointError:
    good = [s for s in self.manager.all_steps() if s != step]
    kept = f"the latest complete one is step {max(good)}" if good else "none was complete yet"
    return CheckpointError(
        f"writing the checkpoint of step {step} under {self.directory} failed: "
        f"{type(error).__name__}: {error}. Training stopped; earlier checkpoints are untouched "
        f"({kept}). Free disk space or fix the directory, then rerun the same command.")

  def restore_latest(self, abstract_state, data_iterator=None, fingerprint: dict | None = None,
                     restart_data: bool = False) -> Restored | None:
    """The newest usable checkpoint (see the module docstring), restored; None if there is none
    at all. The data iterator is restored in place unless `restart_data`, or the checkpoint has
    no data position. If every checkpoint is corrupt this is a CheckpointError, never a silent
    fresh start."""
    problems, unverified = [], []
    for step in sorted(self.manager.all_steps(), reverse=True):
      step_dir = self.step_dir(step)
      if not has_manifest(step_dir):
        unverified.append(step)
        continue
      problem = verify_manifest(step_dir)
      if problem is None:
        restored = self._restore_verified(step, abstract_state, data_iterator, fingerprint,
                                          restart_data)
        for newer in unverified:
          self._report(f"checkpoint of step {newer} has no manifest (the run stopped before it "
                       f"was verified); resuming from step {step}, the newest verified one, and "
                       f"moving it to {UNVERIFIED}/")
          self._set_aside(newer, UNVERIFIED)
        return restored
      problems.append(f"step {step}: {problem}")
      self._report(f"checkpoint of step {step} is corrupt: {problem}; falling back to an earlier "
                   "checkpoint")
      self._set_aside(step, CORRUPT)
    for step in unverified:  # no verified checkpoint at all: the newest that loads, said loudly
      self._report(f"checkpoint of step {step} has no manifest (the run stopped before it was "
                   "verified): it cannot be checked for corruption; loading it unverified")
      try:
        return self._restore(step, abstract_state, data_iterator, fingerprint, restart_data)
      except InputError:  # changed data or process count: a usage error, nothing is moved
        raise
      except Exception as e:
        problem = f"{self.step_dir(step)}: cannot be read ({type(e).__name__}: {_first_line(e)})"
        problems.append(f"step {step}: {problem}")
        self._report(f"unverified checkpoint of step {step} {problem}; moving it to "
                     f"{UNVERIFIED}/")
        self._set_aside(step, UNVERIFIED)
    if problems:
      raise CheckpointError(
          f"no usable checkpoint in {self.directory}: " + "; ".join(problems) +
          ". Refusing to start a fresh run over an existing one: restore a good copy of a "
          "checkpoint, or pass --restart to start over (the previous run's files are kept).")
    return None

  def _restore_verified(self, step, abstract_state, data_iterator, fingerprint, restart_data):
    try:
      return self._restore(step, abstract_state, data_iterator, fingerprint, restart_data)
    except InputError:  # a data position that cannot apply here, named in the message
      raise
    except Exception as e:  # its bytes are as written: the run, not the checkpoint, differs
      raise CheckpointError(
          f"the checkpoint of step {step} is intact (it matches its manifest) but does not fit "
          f"this run: {type(e).__name__}: {_first_line(e)}. Nothing was moved. A setting that "
          "shapes the model, the optimizer state or the data pipeline differs from the run's "
          f"({os.path.join(self.workdir, 'config.json')}): restore it, pass --restart_data if "
          "only the data pipeline changed, or use another --workdir.") from e

  def _restore(self, step, abstract_state, data_iterator, fingerprint, restart_data) -> Restored:
    changes = []
    if data_iterator is not None and self._saved_positions(step):
      saved = self.read_fingerprint(step)
      if saved is not None and fingerprint is not None:
        changes = fingerprint_changes(saved, json.loads(json.dumps(fingerprint)))
      if restart_data:
        data_iterator = None
      elif changes:
        raise DataChangedError(
            f"the data differs from what the checkpoint of step {step} was reading: "
            f"{'; '.join(changes)}. Resuming would apply its data position to other data. Pass "
            "--restart_data to keep the model and optimizer state and start the new data from "
            "its beginning, restore the setting or the files, or use another --workdir.")
      elif self._data_item(step, data_iterator) == "data":
        distributed.check_data_process_count(os.path.join(self.step_dir(step), "data"))
    return Restored(step, self.restore(step, abstract_state, data_iterator), changes)

  def read_fingerprint(self, step: int) -> dict | None:
    """The data fingerprint saved with checkpoint `step`, or None (an older or imported one)."""
    if not os.path.isdir(os.path.join(self.step_dir(step), "fingerprint")):
      return None
    restored = self.manager.restore(step, args=ocp.args.Composite(
        fingerprint=ocp.args.JsonRestore()))
    return restored["fingerprint"]

  def _report(self, message: str) -> None:
    log.warning("%s", message)
    if jax.process_index() == 0:
      print(f"WARNING: {message}", flush=True)

  def _set_aside(self, step: int, folder: str) -> None:
    """Moves a checkpoint out of the manager's sight, keeping it for inspection."""
    if jax.process_index() == 0:
      target = os.path.join(os.path.dirname(self.directory), folder,
                            f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(self.step_dir(step), target)
    distributed.sync(f"pretrax checkpoint {step} set aside")
    self.manager.close()
    self.manager = self._manager()

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores `state` (shaped and sharded like `abstract_state`) and, in place, the iterator.

    A checkpoint without a data item (e.g. imported weights) leaves the iterator at its start.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    data_item = None if data_iterator is None else self._data_item(step, data_iterator)
    if data_item == POSITION:
      items[POSITION] = ocp.args.JsonRestore()
    elif data_item == "data":
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_item == POSITION:
      data_iterator.set_position(restored[POSITION])
    return restored["state"]

  def _saved_positions(self, step: int) -> list[str]:
    return [item for item in (POSITION, "data")
            if os.path.isdir(os.path.join(self.step_dir(step), item))]

  def _data_item(self, step: int, data_iterator) -> str | None:
    """Which saved data position of checkpoint `step` fits `data_iterator`: POSITION, "data"
    or None (it has none). A position of the other kind is a data change."""
    saved = self._saved_positions(step)
    if not saved:
      return None
    wanted = POSITION if hasattr(data_iterator, "position") else "data"
    if saved[0] != wanted:
      raise DataChangedError(
          f"the checkpoint of step {step} saved a data position of another pipeline "
          f"({'per-process iterator states' if saved[0] == 'data' else 'a global row index'}); "
          "pass --restart_data to keep the model and optimizer state and start the data from "
          "its beginning")
    return wanted

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
