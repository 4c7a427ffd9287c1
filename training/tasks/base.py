"""The task interface: what differs between jobs that run on the one trainer.

A task owns how its model is built or initialized (fresh, or from a pretrained run), how train
and eval batches are made, the loss sums and metrics, and what a run reports. The trainer
(training/trainer.py) owns everything else: the run directory and its lock, the mesh and the
shardings, the jitted step, checkpoints (with the data position), signals, the non-finite policy,
logging and the evaluation cadence. So every task gets all of them.

Loss terms. `terms` maps a metric prefix to the term's weight in the loss: {"": 1.0} for one term,
{"mlm_": 1.0, "nsp_": 1.0} for BERT, {"cls_": 1.0, "lm_": λ} for GPT-1 fine-tuning.
`sums(model, batch)` returns PREFIX + loss_sum / correct_sum / weight_sum for each term (see
training/losses.py) and `weights(batch)` each term's weight_sum over the whole batch, so the loss
Σ weight · loss_sum / weight_sum is the same whether or not the batch is split into micro-batches.

Adding a task: a module in training/tasks/ with a `Task` subclass, and one line in `TASKS`
(training/tasks/__init__.py) naming the config value that selects it.
"""

import abc
import dataclasses
import shlex
from typing import Any, ClassVar, Iterable, Iterator

import jax
import numpy as np
from flax import nnx

from pretrax.training import config as config_lib, losses
from pretrax.training.config import Config, ConfigError

INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}  # XLA's CPU backend


def task_name(config: Config) -> str:
  """The config value that selects a run's task: finetune.task when set, else data.objective."""
  return config.finetune.task or config.data.objective


@dataclasses.dataclass
class Task(abc.ABC):
  """One job on the trainer. `open` builds it for a run directory; the rest is called by the
  trainer (inside the mesh and the logical axis rules where it builds or runs the model)."""
  config: Config
  tokenizer: Any
  workdir: str

  terms = {"": 1.0}
  families: ClassVar[tuple[str, ...]] = ()  # the config.model.family values this task trains

  @classmethod
  def check_config(cls, config: Config) -> None:
    """Raises ConfigError naming the field for a config this task cannot run."""
    config_lib.validate(config)
    if config.model.family not in cls.families:
      field = "finetune.task" if config.finetune.task else "data.objective"
      raise ConfigError(f"config.{field}={task_name(config)!r} does not train a "
                        f"config.model.family={config.model.family!r} model; it trains "
                        f"{' or '.join(cls.families)}")

  @classmethod
  @abc.abstractmethod
  def open(cls, config: Config, workdir: str) -> "Task":
    """Resolves `config` for `workdir` (new, or a run to resume), writes the run's own files
    (tokenizer, ...) on process 0, and returns the task. The trainer writes config.json once
    the run has started (or resumed) under it."""

  # ------------------------------------------------------------------------------------------
  # The model.

  @abc.abstractmethod
  def build_model(self, seed: int) -> nnx.Module:
    """The model with freshly initialized parameters."""

  def abstract_model(self):
    """(graphdef, abstract nnx.State) without allocating parameters."""
    return nnx.split(nnx.eval_shape(lambda: self.build_model(0)))

  def init_params(self, abstract_params, params_sharding) -> dict:
    """The step-0 parameters, placed in `params_sharding`: a fresh init from config.train.seed."""
    seed = self.config.train.seed
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(self.build_model(seed))),
                   out_shardings=params_sharding)
    # Run once, so on CPU compiled for speed of compilation (the random draws of every parameter
    # take seconds at the default level); the values agree to float32 rounding.
    cpu = all(d.platform == "cpu" for s in jax.tree.leaves(params_sharding)
              for d in s.device_set)
    return init.lower().compile(compiler_options=INIT_COMPILER_OPTIONS if cpu else None)()

  @property
  def uses_dropout(self) -> bool:
    return self.config.model.dropout > 0 or self.config.model.attention_dropout > 0

  # ------------------------------------------------------------------------------------------
  # Data: dicts of numpy arrays holding this process's rows of the global batch.

  @abc.abstractmethod
  def train_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """An endless, checkpointable iterator of training batches: one with `position()` and
    `set_position(dict)` (the same global position on every process, data/global_batches.py),
    or a grain.DatasetIterator (a state per process)."""

  def data_fingerprint(self) -> dict:
    """What the saved data position means something for: the data settings (not where corpora
    are cached), the batch size and seed, and the tokenizer. Saved with every checkpoint; a run
    resumed on a different one is refused unless it restarts its data (trainer). Tasks add the
    identity of their corpus."""
    data = {k: v for k, v in config_lib.to_dict(self.config.data).items()
            if k not in ("data_dir", "rows_dir", "tokenizer", "eval", "eval_split",
                         "build_workers")}
    return {**{f"data.{k}": v for k, v in data.items()},
            "train.batch_size": self.config.train.batch_size,
            "train.seed": self.config.train.seed,
            "tokenizer": self.tokenizer.describe()}

  @abc.abstractmethod
  def eval_batches(self, max_batches: int | None) -> Iterable[dict[str, np.ndarray]] | None:
    """The validation batches, the same every time; None when the run has no eval data."""

  @abc.abstractmethod
  def eval_data(self, split: str | None, max_batches: int | None):
    """For `pretrax eval`: (the name of what is evaluated, its batches); `split` None is the
    run's validation data, `max_batches` None the run's own eval size."""

  # ------------------------------------------------------------------------------------------
  # Loss and metrics (inside jit).

  @abc.abstractmethod
  def weights(self, batch) -> dict[str, jax.Array]:
    """Each term's weight_sum over the whole batch: its normalizer."""

  @abc.abstractmethod
  def sums(self, model, batch, rngs=None) -> dict[str, jax.Array]:
    """Forward pass -> PREFIX loss_sum / correct_sum / weight_sum for each term."""

  def eval_sums(self, model, batch) -> dict[str, jax.Array]:
    """Sums added over the validation batches (may hold more than the loss terms)."""
    return self.sums(model, batch)

  def generation_metrics(self, model: nnx.Module) -> dict[str, float] | None:
    """Metrics of what `model` generates for the eval data, merged into each eval's metrics
    (called at every eval, on every process); None: the task has none."""
    return None

  def metrics(self, sums: dict) -> dict[str, jax.Array]:
    """Train metrics of one step from its sums."""
    return losses.term_metrics(sums, self.terms)

  def summarize(self, totals: dict) -> dict[str, float]:
    """Validation metrics (floats) from the sums added over every eval batch."""
    totals = jax.device_get(totals)
    return {k: float(v) for k, v in losses.term_metrics(totals, self.terms).items()}

  # ------------------------------------------------------------------------------------------
  # Accounting and reports.

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len

  @abc.abstractmethod
  def flops_per_token(self, n_params: int) -> float:
    """Training FLOPs per token, for MFU."""

  def next_commands(self) -> list[str]:
    """The commands a user runs next on this run, printed when training ends."""
    return [f"pretrax eval --workdir={shlex.quote(self.workdir)}"]

  def describe(self) -> str:
    """What is trained, for the start-up line."""
    return f"{self.config.model.family} ({self.config.data.objective})"

  def describe_step(self) -> str:
    """The tokens of a step, for the start-up line."""
    return f"{self.config.train.batch_size}x{self.config.data.seq_len} tokens/step"
