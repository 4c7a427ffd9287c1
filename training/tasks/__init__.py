"""The tasks the trainer runs, by the config value that selects them.

A run's task is `config.finetune.task` when set (fine-tuning), else `config.data.objective`
(pretraining). Adding a task: a module here with a `Task` subclass (training/tasks/base.py) and
one line in TASKS.
"""

from pretrax.training.config import Config, ConfigError
from pretrax.training.tasks.base import Task, task_name
from pretrax.training.tasks.causal_lm import CausalLM
from pretrax.training.tasks.classification import Classification
from pretrax.training.tasks.masked_lm import MaskedLM
from pretrax.training.tasks.seq2seq_lm import Seq2SeqLM, Seq2SeqPairs

TASKS: dict[str, type[Task]] = {
    "causal": CausalLM,
    "mlm": MaskedLM,
    "mlm+nsp": MaskedLM,
    "mlm+sop": MaskedLM,
    "denoise": Seq2SeqLM,
    "span_corruption": Seq2SeqLM,
    "seq2seq": Seq2SeqPairs,
    "classify": Classification,
}


def task_class(config: Config) -> type[Task]:
  name = task_name(config)
  if name not in TASKS:
    field = "finetune.task" if config.finetune.task else "data.objective"
    raise ConfigError(f"config.{field}={name!r} is not a task pretrax knows; choose one of "
                      f"{', '.join(TASKS)}")
  return TASKS[name]


def open_task(config: Config, workdir: str) -> Task:
  """The task of `config` for the run in `workdir` (see Task.open)."""
  return task_class(config).open(config, workdir)
