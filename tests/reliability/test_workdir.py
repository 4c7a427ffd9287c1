"""Promises 5 and 8: a run directory is never mixed up, shared, or silently unwritable."""

import subprocess

import pytest



@pytest.mark.slow
def test_different_model_in_the_same_workdir_is_refused(runner, tmp_path, read_metrics):
  workdir = str(tmp_path / "run")
  assert runner.run(workdir, "--config.train.steps=2").returncode == 0
  out = runner.run(workdir, "--config.train.steps=4", "--config.model.num_layers=2",
                   "--config.model.norm=rmsnorm")
  assert out.returncode == 2
  assert "model.num_layers: saved 1, requested 2" in out.stderr
  assert "model.norm: saved 'layernorm', requested 'rmsnorm'" in out.stderr
  assert max(m["step"] for m in read_metrics(workdir)) == 2  # the run is untouched


@pytest.mark.slow
def test_a_second_concurrent_run_on_one_workdir_refuses(any_runner, tmp_path):
  runner = any_runner
  workdir = str(tmp_path / "run")
  first = runner.start(workdir, "--config.train.steps=100000")
  runner.wait_for_progress(workdir, first, 2)
  second = runner.run(workdir, "--config.train.steps=100000", timeout=120)
  first.terminate()
  first.communicate(timeout=60)
  assert second.returncode == 1
  assert "in use by another pretrax run" in second.stderr and f"pid {first.pid}" in second.stderr


def test_unwritable_workdir_is_a_clear_error_at_start(any_runner, tmp_path):
  runner = any_runner
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  out = runner.run(str(blocker / "run"), "--config.train.steps=2")
  assert out.returncode == 2
  assert f"--workdir={blocker}/run cannot be written" in out.stderr
  assert "Traceback" not in out.stderr


@pytest.fixture
def small_disk(tmp_path):
  """A real 1.5 MB filesystem (tmpfs), so writes fail with ENOSPC once it is full."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f"mounting a tmpfs needs root (CI runs as root): {result.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_stops_training_and_keeps_earlier_checkpoints(runner, small_disk):
  workdir = str(small_disk / "run")
  # Each checkpoint of this model is ~250 KB: the disk fills after a few of them.
  out = runner.run(workdir, "--config.train.steps=200", "--config.checkpoint.every=1",
                   "--config.checkpoint.keep=100", "--config.model.d_model=64",
                   "--config.model.num_heads=2")
  assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
  assert "No space left on device" in out.stderr
  assert "earlier checkpoints are untouched" in out.stderr
  from pretrax.inference import loading
  run = loading.load_run(workdir)  # the latest complete checkpoint still loads
  assert 1 <= run.step < 200
