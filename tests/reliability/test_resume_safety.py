"""Promise 9: resuming never abandons a good checkpoint and never restarts silently.

A setting the checkpoints cannot continue under, changed data or another tokenizer is an error
that names it and moves nothing; a workdir that has trained starts over only with --restart.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

STEPS = ["--config.train.steps=4", "--config.checkpoint.every=2"]


def _snapshot(workdir):
  """Every file under `workdir` with its size: what a refused command must leave as it was."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      if name != ".lock":
        path = os.path.join(root, name)
        out[os.path.relpath(path, workdir)] = os.path.getsize(path)
  return out


@pytest.mark.slow
def test_config_changes_on_resume_are_refused_by_name_or_allowed(runner, tmp_path):
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, *STEPS).returncode == 0
  before = _snapshot(workdir)

  out = runner.run(workdir, *STEPS, "--config.optimizer.grad_clip=0")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "optimizer.grad_clip: saved 1.0, requested 0.0" in out.stderr
  assert "Traceback" not in out.stderr

  out = runner.run(workdir, *STEPS, "--config.data.shuffle=False")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "data.shuffle: saved True, now False" in out.stderr and "--restart_data" in out.stderr
  assert _snapshot(workdir) == before  # nothing moved, nothing rewritten
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))

  # The run length, the learning-rate schedule and the cadence may change.
  out = runner.run(workdir, "--config.train.steps=6", "--config.checkpoint.every=3",
                   "--config.optimizer.learning_rate=1e-3")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("Resumed from")[1].split()[0].endswith("/checkpoints/4")
  assert "train.steps: 4 -> 6" in out.stdout and "optimizer.learning_rate" in out.stdout
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["train"]["steps"] == 6 and saved["optimizer"]["learning_rate"] == 1e-3


@pytest.mark.slow
def test_changed_corpus_is_refused_unless_the_data_restarts(runner, tmp_path, read_metrics):
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, *STEPS).returncode == 0
  with open(runner.corpus, "a") as f:
    f.write("\n\nA new scene, appended after the run began.\n")
  before = _snapshot(workdir)

  out = runner.run(workdir, "--config.train.steps=6")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "the data differs from what the checkpoint of step 4 was reading" in out.stderr
  assert "corpus.dataset: saved 'local_text/corpus_" in out.stderr
  assert _snapshot(workdir) == before

  out = runner.run(workdir, "--config.train.steps=6", "--restart_data")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "the data stream starts over at step 4" in out.stdout
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  noted = [r for r in records if "data_restarted_at" in r]
  assert len(noted) == 1 and noted[0]["step"] == 5 and noted[0]["data_restarted_at"] == 4
  assert any(c.startswith("corpus.dataset") for c in noted[0]["data_changes"])


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory, shakespeare_text):
  """A small SentencePiece model trained by `pretrax tokenizer train`."""
  tmp = tmp_path_factory.mktemp("spm")
  (tmp / "text.txt").write_text(shakespeare_text[:200_000])
  out = subprocess.run([sys.executable, "-m", "pretrax.cli", "tokenizer", "train",
                        f"--input={tmp / 'text.txt'}", f"--output={tmp / 'spm'}",
                        "--vocab_size=400"], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  return str(tmp / "spm.model")


@pytest.mark.long  # in CI: run_dir.prepare_tokenizer's refusal (tests/test_hf_tokenizer.py)
def test_the_configured_tokenizer_is_the_one_used(runner, tmp_path, spm_model):
  # A workdir with checkpoints keeps its tokenizer: another one is refused.
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, "--config.train.steps=2").returncode == 0
  out = runner.run(workdir, "--config.train.steps=4", f"--config.data.tokenizer={spm_model}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "was trained with its own tokenizer (bytes)" in out.stderr
  assert "--config.data.tokenizer=byte" in out.stderr

  # Before any checkpoint exists (a start that failed), the configured one replaces it.
  fresh = str(tmp_path / "failed_start")
  from pretrax.data import tokenizers
  os.makedirs(fresh)
  tokenizers.ByteTokenizer().save(fresh)
  out = runner.run(fresh, "--config.train.steps=2", f"--config.data.tokenizer={spm_model}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(f for f in os.listdir(fresh) if f.startswith("tokenizer")) == ["tokenizer.model"]
  assert json.load(open(os.path.join(fresh, "config.json")))["data"]["tokenizer"] == spm_model
  assert tokenizers.load_from_directory(fresh).kind == "sentencepiece"


@pytest.mark.slow
def test_a_workdir_that_trained_restarts_only_with_the_flag(runner, tmp_path, read_metrics):
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, "--config.train.steps=3").returncode == 0
  # Every checkpoint corrupt: refused, and refused again when the command is simply rerun.
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    manifest = os.path.join(workdir, "checkpoints", step, "pretrax_manifest.json")
    victim = max(json.load(open(manifest)).items(), key=lambda kv: kv[1][0])[0]
    with open(os.path.join(workdir, "checkpoints", step, victim), "r+b") as f:
      f.truncate(10)
  before = read_metrics(workdir)
  for attempt in range(2):
    out = runner.run(workdir, "--config.train.steps=3")
    assert out.returncode == 1, (attempt, out.stderr[-2000:])
    assert "--restart" in out.stderr
    assert read_metrics(workdir) == before
  assert "has trained before (metrics.jsonl up to step 3; 1 checkpoint(s) in " \
         "checkpoints_corrupt/)" in out.stderr

  out = runner.run(workdir, "--config.train.steps=2", "--restart")
  assert out.returncode == 0, out.stderr[-2000:]
  previous = os.path.join(workdir, "previous_runs")
  [kept] = os.listdir(previous)
  assert {"metrics.jsonl", "checkpoints_corrupt", "config.json"} <= set(
      os.listdir(os.path.join(previous, kept)))
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]  # never mixed with the old ones
  assert [r["step"] for r in read_metrics(os.path.join(previous, kept))] == [
      r["step"] for r in before]


def _wait_for(predicate, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError("timed out")


@pytest.mark.parametrize("when", ["compiling", pytest.param("training", marks=pytest.mark.slow)])
def test_a_second_sigint_interrupts_at_once_in_one_line(runner, tmp_path, when):
  workdir = str(tmp_path / "run")
  proc = runner.start(workdir, "--config.train.steps=100000", "--config.checkpoint.every=5")
  if when == "compiling":  # the banner comes right before the first step compiles
    banner = proc.stdout.readline()
    while "params, mesh" not in banner:
      assert banner, proc.communicate()
      banner = proc.stdout.readline()
  else:
    runner.wait_for_progress(workdir, proc, 3)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.2)
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert time.time() - sent < 5  # at once, not after compilation or the next checkpoint
  assert proc.returncode == 130
  assert "Traceback" not in err
  assert err.count("interrupted by a second SIGINT") == 1
