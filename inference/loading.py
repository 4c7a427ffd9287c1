"""Loading a trained run for inference: its config, tokenizer, task and parameters."""

import dataclasses
import sys

import jax
from flax import nnx

from pretrax.data import tokenizers
from pretrax.data.errors import InputError
from pretrax.training import checkpointing, run_dir, tasks
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


def _usable_step(checkpointer: checkpointing.Checkpointer, workdir: str, step: int | None) -> int:
  """`step` (default: the newest) if its checkpoint verifies; corrupt ones are reported."""
  steps = checkpointer.all_steps()
  if not steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint under {checkpointer.directory}")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{workdir} has no checkpoint for step {step}; available: "
                            f"{sorted(steps)}")
  for candidate in ([step] if step is not None else sorted(steps, reverse=True)):
    problem = checkpointing.verify_manifest(checkpointer.step_dir(candidate))
    if problem is None:
      return candidate
    print(f"WARNING: checkpoint of step {candidate} is corrupt: {problem}", file=sys.stderr)
  raise checkpointing.CheckpointError(f"no usable checkpoint in {checkpointer.directory} (see "
                                      "the warnings above)")


def load_run(workdir: str, step: int | None = None) -> Run:
  """Loads config, tokenizer and the parameters of checkpoint `step` (default: latest), on one
  device."""
  if step is not None and step < 0:
    raise InputError(f"--step={step}: a checkpoint's step is >= 0 (omit it for the latest)")
  config = run_dir.read_config(workdir)
  tokenizer = tokenizers.load_from_directory(workdir)
  task = tasks.task_class(config)(config, tokenizer, workdir)
  checkpointer = checkpointing.Checkpointer(workdir, config.checkpoint, read_only=True)
  try:
    step = _usable_step(checkpointer, workdir, step)
    graphdef, abstract_state = task.abstract_model()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract_params = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device),
        nnx.to_pure_dict(abstract_state))
    params = checkpointer.restore_params(step, abstract_params)
  finally:
    checkpointer.close()
  return Run(config=config, tokenizer=tokenizer, task=task, graphdef=graphdef, params=params,
             step=step)


def require_language_model(run: Run, command: str, workdir: str) -> None:
  """`score` and `sample` need a pretrained causal language model."""
  if run.config.finetune.task:
    raise ConfigError(f"{workdir} is a fine-tuned {run.config.finetune.task} run: `pretrax eval` "
                      f"evaluates it; {command} needs a pretrained language model")
  if run.config.model.family != "gpt":
    raise ConfigError(f"pretrax {command} needs a causal language model; {workdir} holds a "
                      f"{run.config.model.family!r} model (use `pretrax eval` for its metrics)")
