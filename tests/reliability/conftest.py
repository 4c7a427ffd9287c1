"""Fixtures for fault-injection tests: a tiny run driven through the real CLI in subprocesses."""

import json
import os
import subprocess
import sys
import time

import pytest

# A 1-layer model: every run here takes seconds.
TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
        "--config.model.max_seq_len=32", "--config.data.seq_len=32",
        "--config.train.batch_size=8", "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.optimizer.warmup_steps=2"]


class Runner:
  """Runs `pretrax` subprocesses on one corpus and data dir, with 1 CPU device each."""

  def __init__(self, tmp_path, text: str):
    self.tmp_path = tmp_path
    self.corpus = tmp_path / "corpus.txt"
    self.corpus.write_text(text[:40_000])
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
    self.env.pop("XLA_FLAGS", None)

  def args(self, workdir, *extra):
    return [sys.executable, "-m", "pretrax.cli", "train",
            "--config=gpt:tiny", f"--workdir={workdir}",
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


class FinetuneRunner(Runner):
  """Runs `pretrax finetune` subprocesses over a pretrained run: classify a line of the corpus
  as written or reversed."""

  def __init__(self, tmp_path, text: str, init: str):
    super().__init__(tmp_path, text)
    self.init = init
    lines = [l.strip() for l in self.corpus.read_text().splitlines() if len(l.strip()) >= 20]
    self.examples = tmp_path / "examples.jsonl"
    self.examples.write_text("".join(
        json.dumps({"text": line[::-1] if i % 2 else line, "label": i % 2}) + "\n"
        for i, line in enumerate(lines[:200])))

  def args(self, workdir, *extra):
    return [sys.executable, "-m", "pretrax.cli", "finetune",
            "--config=finetune:classify", f"--init={self.init}",
            f"--workdir={workdir}", f"--config.data.train={self.examples}",
            "--config.data.seq_len=32", "--config.train.batch_size=8",
            "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.optimizer.warmup_steps=2", *extra]


@pytest.fixture
def tiny_args():
  """The TINY model overrides, for tests that call the CLI in-process."""
  return list(TINY)


@pytest.fixture
def runner(tmp_path, shakespeare_text):
  return Runner(tmp_path, shakespeare_text)


@pytest.fixture(scope="session")
def pretrained_gpt(tmp_path_factory, shakespeare_text):
  """A tiny GPT pretrained for 4 steps by `pretrax train`: what fine-tuning starts from."""
  tmp = tmp_path_factory.mktemp("pretrained")
  workdir = str(tmp / "run")
  out = Runner(tmp, shakespeare_text).run(workdir, "--config.train.steps=4")
  assert out.returncode == 0, out.stderr[-2000:]
  return workdir


@pytest.fixture
def finetune_runner(tmp_path, shakespeare_text, pretrained_gpt):
  return FinetuneRunner(tmp_path, shakespeare_text, pretrained_gpt)


@pytest.fixture(params=["pretrain", pytest.param("finetune",
                                                marks=[pytest.mark.slow, pytest.mark.long])])
def any_runner(request):
  """The same promise checked for a pretraining run and for a fine-tuning run: both run on the
  one trainer."""
  return request.getfixturevalue("runner" if request.param == "pretrain" else "finetune_runner")
