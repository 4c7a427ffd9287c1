"""Fixtures for fault-injection tests: a tiny run driven through the real CLI in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, SHAKESPEARE

TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.max_seq_len=32", "--config.data.seq_len=32",
        "--config.train.batch_size=8", "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.optimizer.warmup_steps=2"]


class Runner:
  """Runs `pretrax` subprocesses on one corpus and data dir, with 1 CPU device each."""

  def __init__(self, tmp_path):
    self.tmp_path = tmp_path
    self.corpus = tmp_path / "corpus.txt"
    with open(SHAKESPEARE) as f:
      self.corpus.write_text(f.read(40_000))
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
    self.env.pop("XLA_FLAGS", None)

  def args(self, workdir, *extra):
    return [sys.executable, "-m", "pretrax.training.cli", "train",
            f"--config={REPO}/configs/gpt.py:tiny", f"--workdir={workdir}",
            f"--config.data.source=text:{self.corpus}", *TINY, *extra]

  def run(self, workdir, *extra, timeout=300):
    return subprocess.run(self.args(workdir, *extra), env=self.env, capture_output=True,
                          text=True, timeout=timeout)

  def start(self, workdir, *extra):
    return subprocess.Popen(self.args(workdir, *extra), env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

  @staticmethod
  def last_step(workdir) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
      return 0
    with open(path) as f:
      return max([json.loads(l)["step"] for l in f if l.strip().endswith("}")], default=0)

  def wait_for_progress(self, workdir, proc, steps, timeout=120):
    """Blocks until `proc` has logged `steps` more steps than metrics.jsonl held at the call."""
    target = self.last_step(workdir) + steps
    deadline = time.time() + timeout
    while time.time() < deadline:
      assert proc.poll() is None, proc.communicate()
      if self.last_step(workdir) >= target:
        return
      time.sleep(0.02)
    raise AssertionError(f"no progress to step {target} within {timeout}s")


@pytest.fixture
def runner(tmp_path):
  return Runner(tmp_path)


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


DETERMINISTIC = ("step", "loss", "accuracy", "lr", "grad_norm")


def assert_same_run(a, b):
  """Identical final parameters and identical per-step metrics (all but timings)."""
  from pretrax.training import checkpointing
  import jax
  ra, rb = checkpointing.load_run(a), checkpointing.load_run(b)
  assert ra.step == rb.step
  for x, y in zip(jax.tree.leaves(ra.params), jax.tree.leaves(rb.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ma, mb = metrics(a), metrics(b)
  assert [m["step"] for m in ma] == [m["step"] for m in mb]
  for x, y in zip(ma, mb):
    assert {k: x[k] for k in DETERMINISTIC} == {k: y[k] for k in DETERMINISTIC}, (x, y)
