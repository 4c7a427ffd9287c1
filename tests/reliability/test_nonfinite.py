"""Promise 4: non-finite losses or gradients are never applied and never checkpointed."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT
from pretrax.training import checkpointing, step as step_lib
from tests.reliability.conftest import metrics


def test_a_poisoned_batch_leaves_the_state_untouched():
  model = GPT(ModelConfig(vocab_size=128, max_seq_len=16, num_layers=1, num_heads=2, d_model=16),
              rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  optimizer = optax.adamw(1e-2)
  train_step = jax.jit(step_lib.make_train_step(
      graphdef, optimizer, optax.constant_schedule(1e-2), objective="causal",
      grad_accum_steps=1, seed=0, dropout=False))
  ids = np.random.default_rng(0).integers(7, 128, size=(2, 17)).astype(np.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": np.ones((2, 16), np.int32),
           "positions": np.tile(np.arange(16, dtype=np.int32), (2, 1)),
           "loss_weights": np.ones((2, 16), np.float32)}
  poisoned = dict(batch, loss_weights=np.where(np.arange(16) == 3, np.nan, 1.0).astype(np.float32)[None].repeat(2, 0))

  state0 = step_lib.initial_state(params, optimizer)
  state1, m1 = train_step(state0, poisoned)
  assert int(m1["skipped"]) == 1 and int(state1["nonfinite_streak"]) == 1
  for a, b in zip(jax.tree.leaves(state0["params"]), jax.tree.leaves(state1["params"])):
    np.testing.assert_array_equal(a, b)  # nothing applied
  state2, m2 = train_step(state1, batch)  # a good batch afterwards trains normally
  assert int(m2["skipped"]) == 0 and int(state2["nonfinite_streak"]) == 0
  assert int(state2["nonfinite_steps"]) == 1
  assert not np.array_equal(jax.tree.leaves(state1["params"])[0], jax.tree.leaves(state2["params"])[0])


def test_absurd_learning_rate_skips_then_aborts_with_finite_checkpoints(runner, tmp_path):
  workdir = str(tmp_path / "run")
  out = runner.run(workdir, "--config.train.steps=40", "--config.checkpoint.every=1",
                   "--config.optimizer.learning_rate=1e38", "--config.optimizer.grad_clip=0",
                   "--config.optimizer.warmup_steps=0", "--config.train.max_nonfinite_skips=3")
  assert out.returncode == 1, out.stderr[-2000:]
  assert "non-finite loss or gradients" in out.stderr and "3 consecutive steps" in out.stderr
  assert "update skipped" in out.stdout
  records = metrics(workdir)
  assert any(r["skipped"] for r in records)
  for step in checkpointing.Checkpointer(workdir, checkpointing.config_lib.CheckpointConfig()).all_steps():
    run = checkpointing.load_run(workdir, step)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.params)), step


def test_stop_policy_stops_at_the_first_non_finite_step(runner, tmp_path):
  workdir = str(tmp_path / "run")
  out = runner.run(workdir, "--config.train.steps=40", "--config.optimizer.learning_rate=1e38",
                   "--config.optimizer.grad_clip=0", "--config.optimizer.warmup_steps=0",
                   "--config.train.nonfinite=stop")
  assert out.returncode == 1 and "config.train.nonfinite=stop" in out.stderr
  assert "update skipped" not in out.stdout
  assert max(r["step"] for r in metrics(workdir)) < 40
