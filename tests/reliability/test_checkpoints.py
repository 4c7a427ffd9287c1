"""Promise 3: a corrupt checkpoint is detected, named, set aside; never a silent fresh start."""

import glob
import os

import pytest


STEPS = ["--config.train.steps=6", "--config.checkpoint.every=2", "--config.checkpoint.keep=3"]


def _largest_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


@pytest.mark.slow
@pytest.mark.parametrize("job,damage", [("pretrain", "truncate"),
                                        pytest.param("pretrain", "alter", marks=pytest.mark.long),
                                        pytest.param("finetune", "alter", marks=pytest.mark.long)])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(request, tmp_path, job, damage,
                                                                  read_metrics):
  runner = request.getfixturevalue("runner" if job == "pretrain" else "finetune_runner")
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, *STEPS).returncode == 0
  victim = _largest_file(os.path.join(workdir, "checkpoints", "6"))
  data = open(victim, "rb").read()
  with open(victim, "wb") as f:
    if damage == "truncate":
      f.write(data[: len(data) // 2])
    else:  # same size, a few bytes flipped in the middle
      mid = len(data) // 2
      f.write(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 8]) + data[mid + 8:])

  out = runner.run(workdir, "--config.train.steps=8", "--config.checkpoint.every=2")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoint of step 6 is corrupt" in out.stdout and os.path.basename(victim) in out.stdout
  assert "Resumed from" in out.stdout and out.stdout.split("Resumed from")[1].split()[0].endswith("/4")
  kept = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
  assert len(kept) == 1 and kept[0].startswith("6-")  # set aside, not deleted
  assert max(m["step"] for m in read_metrics(workdir)) == 8


@pytest.mark.slow
def test_every_checkpoint_corrupt_is_an_error_not_a_fresh_start(any_runner, tmp_path,
                                                                read_metrics):
  runner = any_runner
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, *STEPS).returncode == 0
  for step_dir in glob.glob(os.path.join(workdir, "checkpoints", "*")):
    victim = _largest_file(step_dir)
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 3)
  before = read_metrics(workdir)
  out = runner.run(workdir, *STEPS)
  assert out.returncode == 1
  assert "no usable checkpoint" in out.stderr and "Refusing to start a fresh run" in out.stderr
  assert read_metrics(workdir) == before  # nothing was overwritten


@pytest.mark.slow
def test_eval_skips_a_corrupt_latest_checkpoint_with_a_warning(runner, tmp_path):
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, *STEPS).returncode == 0
  victim = _largest_file(os.path.join(workdir, "checkpoints", "6"))
  with open(victim, "r+b") as f:
    f.truncate(10)
  import json
  import subprocess
  import sys
  out = subprocess.run([sys.executable, "-m", "pretrax.cli", "eval",
                        f"--workdir={workdir}"], env=runner.env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "checkpoint of step 6 is corrupt" in out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 4


@pytest.mark.slow
def test_eval_while_training_with_keep_1_reads_the_newest_checkpoint(runner, tmp_path, capsys,
                                                                     monkeypatch):
  """The trainer deletes each checkpoint once it saves the next: eval without --step moves on to
  the newest; a --step deleted while read is an error naming the race, never orbax's own."""
  import json
  from pretrax.cli import main as cli
  monkeypatch.setenv("PRETRAX_DATA_DIR", runner.env["PRETRAX_DATA_DIR"])
  monkeypatch.setenv("PRETRAX_TRACEBACK", "")
  workdir = str(tmp_path / "run")
  proc = runner.start(workdir, "--config.train.steps=100000", "--config.checkpoint.every=1",
                      "--config.checkpoint.keep=1")
  try:
    runner.wait_for_progress(workdir, proc, 3)
    latest, failed = [], 0
    for i in range(12):
      args = ["eval", f"--workdir={workdir}", "--batches=1"]
      if i % 2:  # the newest step now: likely deleted before eval is done with it
        steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
        args.append(f"--step={max(steps)}")
      code = cli.main(args)
      out, err = capsys.readouterr()
      assert proc.poll() is None, "training stopped during the test"
      assert "Traceback" not in err and "not found" not in err, err
      if i % 2 == 0:
        assert code == 0, err
        latest.append(json.loads(out.strip().splitlines()[-1])["step"])
      elif code:
        assert code in (1, 2) and "keeps only the newest 1 (config.checkpoint.keep=1)" in err, err
        failed += 1
    assert latest == sorted(latest) and latest[-1] > latest[0], latest
    print(f"{failed} of 6 evals of a named step lost the race")
  finally:
    proc.terminate()
    proc.communicate(timeout=120)
