"""Adding a task is one module and one registry line: a task written here, registered in TASKS,
runs on the unchanged trainer with its checkpoints, exact resume and `pretrax eval`."""

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax.data import tokenizers
from pretrax.inference import evaluate
from pretrax.modeling import models
from pretrax.training import config as config_lib, losses, metrics, run_dir, tasks, trainer
from pretrax.training.config import ConfigError
from pretrax.training.tasks.base import Task

MODULUS = 100  # rows count upwards through byte ids 7 .. 106, wrapping around


class CountingBatches(grain.DatasetIterator):
  """Rows that count upwards from a random start: batch n is a pure function of (seed, n)."""

  def __init__(self, batch_size: int, seq_len: int, seed: int):
    super().__init__()
    self._shape, self._seed, self._step = (batch_size, seq_len), seed, 0

  def __next__(self):
    b, t = self._shape
    starts_b = np.random.default_rng([self._seed, self._step]).integers(0, MODULUS, b)
    self._step += 1
    rows_bt = 7 + (starts_b[:, None] + np.arange(t + 1)) % MODULUS
    return {"inputs": rows_bt[:, :-1].astype(np.int32), "targets": rows_bt[:, 1:].astype(np.int32),
            "segment_ids": np.ones((b, t), np.int32), "loss_weights": np.ones((b, t), np.float32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))}

  def get_state(self):
    return {"step": self._step}

  def set_state(self, state):
    self._step = state["step"]


class Counting(Task):
  """Next-token prediction on counting rows: a GPT, but neither a corpus nor a tokenizer."""
  families = ("gpt",)

  @classmethod
  def open(cls, config, workdir):
    tokenizer = tokenizers.load_tokenizer("byte")  # only so the run directory is complete
    tokenizer.save(workdir)
    config = run_dir.resolve_vocab(config, tokenizer)
    run_dir.write_config(config, workdir)
    return cls(config, tokenizer, workdir)

  def build_model(self, seed):
    return models.build_model(self.config.model, seed)

  def train_batches(self):
    return CountingBatches(self.config.train.batch_size, self.config.data.seq_len,
                           self.config.train.seed)

  def eval_batches(self, max_batches):
    batches = CountingBatches(self.config.train.batch_size, self.config.data.seq_len, seed=12345)
    return [next(batches) for _ in range(max_batches or 2)]

  def eval_data(self, split, max_batches):
    return "counting", self.eval_batches(max_batches)

  def weights(self, batch):
    return {"": jnp.sum(batch["loss_weights"])}

  def sums(self, model, batch, rngs=None):
    hidden_btd = model.hidden_states(batch["inputs"], batch["segment_ids"], batch["positions"],
                                     rngs=rngs)
    return losses.cross_entropy_sums(model.logits(hidden_btd), batch["targets"],
                                     batch["loss_weights"])

  def flops_per_token(self, n_params):
    return metrics.flops_per_token(self.config.model, n_params, self.config.data.seq_len)


@pytest.fixture
def counting(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "counting", Counting)  # the one registry line
  return config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"), {
      "data.objective": "counting", "model.num_layers": "1", "model.d_model": "32",
      "model.num_heads": "2", "model.max_seq_len": "32", "data.seq_len": "32",
      "train.batch_size": "8", "train.steps": "40", "train.log_every": "10",
      "train.eval_every": "20", "train.eval_steps": "2", "checkpoint.every": "20",
      "optimizer.learning_rate": "1e-2", "optimizer.warmup_steps": "4"})


@pytest.mark.slow
def test_a_new_task_trains_resumes_and_evaluates_on_the_trainer(counting, tmp_path, read_metrics,
                                                                assert_equal_runs):
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  trainer.train(counting, whole)
  trainer.train(counting, split, stop_after=20)
  trainer.train(counting, split)
  assert_equal_runs(whole, split)
  records = read_metrics(whole)
  assert records[-1]["eval_loss"] < records[0]["loss"] - 1.0  # it learns to count
  evaluated = evaluate.eval_run(whole)
  assert evaluated["split"] == "counting" and evaluated["step"] == 40
  np.testing.assert_allclose(evaluated["loss"], records[-1]["eval_loss"], rtol=1e-5)


def test_a_task_refuses_a_model_family_it_does_not_train(counting, tmp_path):
  config = config_lib.apply_overrides(counting, {"model.family": "bert"})
  with pytest.raises(ConfigError, match="data.objective='counting' does not train a "
                                        "config.model.family='bert' model; it trains gpt"):
    trainer.train(config, str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="data.objective='mlm' does not train a "
                                        "config.model.family='gpt' model; it trains bert"):
    trainer.train(config_lib.apply_overrides(counting, {"data.objective": "mlm"}),
                  str(tmp_path / "run"))
  with pytest.raises(ConfigError, match="'nonsense' is not a task pretrax knows; choose one of "
                                        "causal, mlm, mlm\\+nsp, mlm\\+sop, denoise, "
                                        "span_corruption, seq2seq, classify, counting"):
    trainer.train(config_lib.apply_overrides(counting, {"data.objective": "nonsense"}),
                  str(tmp_path / "run"))
