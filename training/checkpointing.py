"""Orbax checkpoints of the train state and the data-iterator state, and loading a run back.

A run directory holds:
  config.json        the fully resolved config
  tokenizer.model    (SentencePiece) or tokenizer.json (byte tokenizer)
  checkpoints/N/     state (params, optimizer state, step) and data (Grain iterator state)
  metrics.jsonl      one JSON object per log step
"""

import dataclasses
import os

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from pretrax.data import tokenizers
from pretrax.modeling.config import ModelConfig
from pretrax.modeling import models
from pretrax.training import config as config_lib
from pretrax.training.config import CheckpointConfig, Config


class Checkpointer:
  """Async, keep-N saves of {state, data iterator} under WORKDIR/checkpoints/STEP."""

  def __init__(self, workdir: str, config: CheckpointConfig, *, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # Readers (eval, score, sample) never create, save or delete anything.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else config.keep,
        enable_async_checkpointing=config.async_save and not read_only, create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def build_model(config: ModelConfig, seed: int = 0):
  return models.build(config, nnx.Rngs(params=seed))


def abstract_model(config: ModelConfig):
  """(graphdef, abstract nnx.State) without allocating parameters."""
  return nnx.split(nnx.eval_shape(lambda: build_model(config)))


@dataclasses.dataclass
class Run:
  """A trained run loaded for inference: its config, tokenizer, model and parameters."""
  config: Config
  tokenizer: tokenizers.Tokenizer
  graphdef: nnx.GraphDef
  params: dict
  step: int

  def model(self):
    return nnx.merge(self.graphdef, self.params)


def load_run(workdir: str, step: int | None = None) -> Run:
  """Loads config, tokenizer and the parameters of checkpoint `step` (default: latest)."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{workdir} is not a pretrax run directory: no config.json "
                            "(train one with `pretrax train --workdir=...`)")
  config = config_lib.load_json(config_path)
  tokenizer = tokenizers.load_from_directory(workdir)
  checkpointer = Checkpointer(workdir, config.checkpoint, read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint under {checkpointer.directory}")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step}; available: {sorted(steps)}")
  graphdef, abstract_state = abstract_model(config.model)
  abstract_params = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      nnx.to_pure_dict(abstract_state))
  params = checkpointer.restore_params(step, abstract_params)
  checkpointer.close()
  return Run(config=config, tokenizer=tokenizer, graphdef=graphdef, params=params, step=step)


def require_causal(run: Run, command: str, workdir: str) -> None:
  if run.config.model.family != "gpt":
    raise ValueError(f"pretrax {command} needs a causal language model; {workdir} holds a "
                     f"{run.config.model.family!r} model (use `pretrax eval` for its metrics)")
