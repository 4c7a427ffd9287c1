"""Promise 4: non-finite losses or gradients are never applied and never checkpointed."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from pretrax.inference import loading
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT
from pretrax.training import checkpointing, config as config_lib, optimizer as optimizer_lib
from pretrax.training import step as step_lib
from pretrax.training.tasks.causal_lm import CausalLM


def _causal_train_step(optimizer, schedule):
  model_config = ModelConfig(vocab_size=128, max_seq_len=16, num_layers=1, num_heads=2,
                             d_model=16)
  graphdef, state = nnx.split(GPT(model_config, rngs=nnx.Rngs(0)))
  config = config_lib.Config(model=model_config)
  task = CausalLM(config, tokenizer=None, workdir="")
  step = step_lib.make_train_step(graphdef, optimizer, schedule, task, grad_accum_steps=1, seed=0)
  return jax.jit(step), nnx.to_pure_dict(state)


def _batches():
  ids = np.random.default_rng(0).integers(7, 128, size=(2, 17)).astype(np.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": np.ones((2, 16), np.int32),
           "positions": np.tile(np.arange(16, dtype=np.int32), (2, 1)),
           "loss_weights": np.ones((2, 16), np.float32)}
  poisoned_weights = np.where(np.arange(16) == 3, np.nan, 1.0).astype(np.float32)
  return batch, dict(batch, loss_weights=poisoned_weights[None].repeat(2, 0))


@pytest.mark.slow
def test_a_poisoned_batch_leaves_the_state_untouched():
  optimizer_config = config_lib.OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
  optimizer = optimizer_lib.make_optimizer(optimizer_config, 10)
  train_step, params = _causal_train_step(
      optimizer, optimizer_lib.learning_rate_schedule(optimizer_config, 10))
  batch, poisoned = _batches()
  state0 = step_lib.initial_state(params, optimizer)
  state1, m1 = train_step(state0, poisoned)
  assert int(m1["skipped"]) == 1 and int(state1["nonfinite_streak"]) == 1
  for a, b in zip(jax.tree.leaves(state0["params"]), jax.tree.leaves(state1["params"])):
    np.testing.assert_array_equal(a, b)  # nothing applied
  state2, m2 = train_step(state1, batch)  # a good batch afterwards trains normally
  assert int(m2["skipped"]) == 0 and int(state2["nonfinite_streak"]) == 0
  assert int(state2["nonfinite_steps"]) == 1
  assert not np.array_equal(jax.tree.leaves(state1["params"])[0], jax.tree.leaves(state2["params"])[0])


@pytest.mark.slow
def test_logged_learning_rate_is_the_one_applied_after_a_skipped_step():
  """The schedule advances only with applied updates; the logged lr is the lr of the update."""
  schedule = optax.linear_schedule(1.0, 0.0, 10)  # lr(n) = 1 - n / 10: each count differs
  optimizer = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(schedule))
  train_step, params = _causal_train_step(optimizer, schedule)
  batch, poisoned = _batches()
  state = step_lib.initial_state(params, optimizer)
  logged = []
  for b in (batch, poisoned, batch, batch):
    state, metrics_ = train_step(state, b)
    logged.append(float(metrics_["lr"]))
  assert int(state["step"]) == 4 and int(step_lib.applied_updates(state["opt_state"])) == 3
  np.testing.assert_allclose(logged, [1.0, 0.9, 0.9, 0.8])  # the skipped step used no count


@pytest.mark.slow
def test_absurd_learning_rate_skips_then_aborts_with_finite_checkpoints(any_runner, tmp_path,
                                                                       read_metrics):
  runner = any_runner
  workdir = str(tmp_path / "run")
  out = runner.run(workdir, "--config.train.steps=40", "--config.checkpoint.every=1",
                   "--config.optimizer.learning_rate=1e38", "--config.optimizer.grad_clip=0",
                   "--config.optimizer.warmup_steps=0", "--config.train.max_nonfinite_skips=3")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "non-finite loss or gradients" in out.stderr and "3 consecutive steps" in out.stderr
  assert "update skipped" in out.stdout
  records = read_metrics(workdir)
  assert any(r["skipped"] for r in records)
  for step in checkpointing.Checkpointer(workdir, config_lib.CheckpointConfig()).all_steps():
    run = loading.load_run(workdir, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.params)), step


@pytest.mark.slow
def test_stop_policy_stops_at_the_first_non_finite_step(any_runner, tmp_path, read_metrics):
  runner = any_runner
  workdir = str(tmp_path / "run")
  out = runner.run(workdir, "--config.train.steps=40", "--config.optimizer.learning_rate=1e38",
                   "--config.optimizer.grad_clip=0", "--config.optimizer.warmup_steps=0",
                   "--config.train.nonfinite=stop")
  assert out.returncode == 1 and "config.train.nonfinite=stop" in out.stderr
  assert "update skipped" not in out.stdout
  assert max(r["step"] for r in read_metrics(workdir)) < 40
