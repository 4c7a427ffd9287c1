"""Promises 1 and 2: a signal checkpoints and exits 0; SIGKILL at any moment loses nothing."""

import os
import random
import signal
import time

import pytest



@pytest.mark.slow
@pytest.mark.parametrize("job,sig", [("pretrain", signal.SIGTERM),
                                     pytest.param("pretrain", signal.SIGINT,
                                                  marks=pytest.mark.long),
                                     pytest.param("finetune", signal.SIGTERM,
                                                  marks=pytest.mark.long)],
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


KILLS = 3


def _committed_steps(workdir) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _damage_newest_checkpoint(workdir) -> int:
  """Overwrites 4 KB in the middle of the largest file of the newest committed checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  step = _committed_steps(workdir)[-1]
  files = [os.path.join(root, n) for root, _, names in os.walk(os.path.join(directory, str(step)))
           for n in names if n != "pretrax_manifest.json"]
  victim = max(files, key=os.path.getsize)
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.seek(max(0, size // 2 - 2048))
    f.write(os.urandom(min(4096, size)))
  return step


@pytest.mark.slow
def test_sigkills_at_random_moments_lose_nothing(any_runner, tmp_path, assert_equal_runs):
  """Checkpoints every step, async: most kills land while one is being written. After each kill
  the newest complete checkpoint is damaged too: the resume detects it (a manifest that
  disagrees, or none yet), says so, falls back, and the run still ends bit-identical."""
  runner = any_runner
  steps = ["--config.train.steps=60", "--config.checkpoint.every=1", "--config.checkpoint.keep=2"]
  # The checkpoint cadence changes no number of the run: the reference and the last leg skip
  # the per-step writes.
  rarely = ["--config.checkpoint.every=30"]
  reference = str(tmp_path / "reference")
  assert runner.run(reference, *steps, *rarely).returncode == 0

  workdir = str(tmp_path / "killed")
  rng = random.Random(0)
  resumed_from, damaged = [], None
  for kill in range(KILLS):
    proc = runner.start(workdir, *steps)
    runner.wait_for_progress(workdir, proc, 3)
    # Two committed checkpoints, so one is left to resume from when the newest is damaged (on a
    # loaded machine the async writes can lag the steps).
    deadline = time.time() + 60
    while len(_committed_steps(workdir)) < 2 and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    for line in out.splitlines():
      if line.startswith("Resumed from"):
        resumed_from.append(int(line.rsplit("/", 1)[1]))
    if damaged is not None:  # the run before this one resumed past the damage, and said so
      assert (f"checkpoint of step {damaged} is corrupt" in out or
              f"checkpoint of step {damaged} has no manifest" in out), out[-3000:]
      assert resumed_from[-1] < damaged
    damaged = _damage_newest_checkpoint(workdir)
  final = runner.run(workdir, *steps, *rarely)
  assert final.returncode == 0, final.stderr[-2000:]
  assert (f"checkpoint of step {damaged} is corrupt" in final.stdout or
          f"checkpoint of step {damaged} has no manifest" in final.stdout)
  assert len(resumed_from) == KILLS - 1 and resumed_from == sorted(resumed_from)
  set_aside = [n for d in ("checkpoints_corrupt", "checkpoints_unverified")
               if os.path.isdir(os.path.join(workdir, d))
               for n in os.listdir(os.path.join(workdir, d))]
  assert len(set_aside) == KILLS  # every damaged checkpoint kept for inspection, none trusted
  assert_equal_runs(reference, workdir)
