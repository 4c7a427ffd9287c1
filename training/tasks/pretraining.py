"""What the pretraining tasks share: a fresh model, the run's tokenizer, batches from a corpus."""

import shlex

import jax
from flax import nnx

from pretrax.data import batches, sources
from pretrax.data.errors import InputError
from pretrax.interop import hf
from pretrax.modeling import models
from pretrax.training import run_dir
from pretrax.training.config import Config
from pretrax.training.tasks.base import Task


class PretrainingTask(Task):
  """A model trained from scratch (or resumed) on config.data.source."""

  @classmethod
  def open(cls, config: Config, workdir: str) -> "PretrainingTask":
    tokenizer = run_dir.prepare_tokenizer(config, workdir)
    return cls(run_dir.resolve_vocab(config, tokenizer), tokenizer, workdir)

  def build_model(self, seed: int) -> nnx.Module:
    return models.build_model(self.config.model, seed)

  def _batches(self, split, **kwargs):
    return dict(config=self.config.data, tokenizer=self.tokenizer, split=split,
                global_batch_size=self.config.train.batch_size, seed=self.config.train.seed,
                process_index=jax.process_index(), process_count=jax.process_count(), **kwargs)

  def next_commands(self) -> list[str]:
    run = self.workdir.rstrip("/")
    commands = super().next_commands()
    try:
      hf.check_exportable(self.config.model)
      commands.append(f"pretrax export --workdir={shlex.quote(run)} --format=hf "
                      f"--output={shlex.quote(run + '_hf')}")
    except InputError:  # no Hugging Face equivalent: export stays possible as params
      commands.append(f"pretrax export --workdir={shlex.quote(run)} --format=params "
                      f"--output={shlex.quote(run + '_params')}")
    commands.append(f"pretrax finetune --config=finetune:classify --init={shlex.quote(run)} "
                    f"--workdir={shlex.quote(run + '_cls')} --config.data.train=train.jsonl "
                    "--config.data.eval=dev.jsonl")
    return commands

  def data_fingerprint(self) -> dict:
    return {**super().data_fingerprint(),
            "corpus": sources.describe_corpus(self.config.data, self.config.data.train_split)}

  def train_batches(self):
    return iter(batches.pretraining_batches(**self._batches(
        self.config.data.train_split, shuffle=self.config.data.shuffle, repeat=True)))

  def eval_batches(self, max_batches: int | None, split: str | None = None):
    return batches.eval_batches(**self._batches(split, max_batches=max_batches))

  def eval_data(self, split: str | None, max_batches: int | None):
    split = split or sources.eval_split(self.config.data)
    if max_batches is None:
      max_batches = self.config.train.eval_steps
    return split, self.eval_batches(max_batches or None, split)
