"""Promises 1 and 2: a signal checkpoints and exits 0; SIGKILL at any moment loses nothing."""

import os
import random
import signal
import time

import pytest



@pytest.mark.slow
@pytest.mark.parametrize("job,sig", [("pretrain", signal.SIGTERM), ("pretrain", signal.SIGINT),
                                     ("finetune", signal.SIGTERM)],
                         ids=["pretrain-SIGTERM", "pretrain-SIGINT", "finetune-SIGTERM"])
def test_signal_checkpoints_the_current_step_and_resume_is_exact(request, tmp_path, job, sig,
                                                                 read_metrics, assert_equal_runs):
  runner = request.getfixturevalue("runner" if job == "pretrain" else "finetune_runner")
  steps = ["--config.train.steps=40", "--config.checkpoint.every=25"]
  reference = str(tmp_path / "reference")
  assert runner.run(reference, *steps).returncode == 0

  workdir = str(tmp_path / "interrupted")
  proc = runner.start(workdir, *steps)
  runner.wait_for_progress(workdir, proc, 8)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert f"received {sig.name}" in out
  stopped_at = max(m["step"] for m in read_metrics(workdir))
  assert 8 <= stopped_at < 40
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped_at)))  # not step 25: now

  resumed = runner.run(workdir, *steps)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"Resumed from {os.path.abspath(workdir)}/checkpoints/{stopped_at}" in resumed.stdout
  assert_equal_runs(reference, workdir)


@pytest.mark.slow
def test_five_sigkills_at_random_moments_lose_nothing(any_runner, tmp_path, assert_equal_runs):
  """Checkpoints every step, async: most kills land while one is being written."""
  runner = any_runner
  steps = ["--config.train.steps=60", "--config.checkpoint.every=1", "--config.checkpoint.keep=2"]
  reference = str(tmp_path / "reference")
  assert runner.run(reference, *steps).returncode == 0

  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  resumed_from = []
  for kill in range(5):
    proc = runner.start(workdir, *steps)
    runner.wait_for_progress(workdir, proc, 3)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    for line in out.splitlines():
      if line.startswith("Resumed from"):
        resumed_from.append(int(line.rsplit("/", 1)[1]))
  final = runner.run(workdir, *steps)
  assert final.returncode == 0, final.stderr[-2000:]
  assert "corrupt" not in final.stdout + final.stderr  # a partial checkpoint is never read
  assert len(resumed_from) == 4 and resumed_from == sorted(resumed_from)
  assert_equal_runs(reference, workdir)
