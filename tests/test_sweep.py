"""`pretrax sweep`: a grid checked before anything runs, run names, dry-run commands, and a real
2 × 2 sweep of tiny runs stopped in the middle, resumed with nothing trained twice, grown, and
compared."""

import csv
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from pretrax.cli import main as cli
from pretrax.experiments import grid

# 1-layer runs of a few seconds; every run logs each step, so a stop lands mid-run.
TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.max_seq_len=32",
        "data.seq_len=32", "train.batch_size=8", "train.steps=20", "train.log_every=1",
        "train.eval_every=10", "train.eval_steps=2", "checkpoint.every=5",
        "optimizer.warmup_steps=2"]


def _sweep_args(workdir, corpus, positions=("learned",), *extra):
  return ["sweep", "--config=gpt:tiny", f"--workdir={workdir}",
          "--grid=model.norm_position=pre,post", f"--grid=model.position={','.join(positions)}",
          f"--set=data.source=text:{corpus}", *[f"--set={s}" for s in TINY], *extra]


@pytest.mark.parametrize("flags, error", [
    (["--grid=model.norm_pos=pre,post"], "unknown config key 'model.norm_pos'"),
    (["--grid=model.num_layers=2,two"], "--config.model.num_layers='two': expected an integer"),
    (["--grid=model.num_layers="], "model.num_layers has no values"),
    (["--grid=model.num_layers=2,2"], "lists '2' twice"),
    (["--grid=model.norm_position=pre,sideways"], "norm_position='sideways'"),
    (["--grid=train.steps=10,20", "--set=train.steps=5"], "train.steps is both swept and set"),
    (["--grid=train.seed=1,2", "--seeds=2"], "train.seed is swept already"),
    (["--grid=model.num_layers"], "expected KEY=VALUE,VALUE"),
])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, capsys, flags, error):
  workdir = tmp_path / "sweep"
  assert cli.main(["sweep", "--config=gpt:tiny", f"--workdir={workdir}", *flags]) == 2
  assert error in capsys.readouterr().err
  assert not workdir.exists()


def test_runs_are_named_after_their_overrides_and_seeds_come_outermost():
  sweep = grid.make_sweep("gpt:tiny", ["model.norm_position=pre,post", "data.seq_len=64"],
                          ["train.steps=7"], 2, None)
  assert [run.name for run in sweep.runs] == [
      "norm_position=pre,seq_len=64,seed=0", "norm_position=post,seq_len=64,seed=0",
      "norm_position=pre,seq_len=64,seed=1", "norm_position=post,seq_len=64,seed=1"]
  assert [run.config.model.norm_position for run in sweep.runs] == ["pre", "post"] * 2
  assert [run.config.train.seed for run in sweep.runs] == [0, 0, 1, 1]
  assert {run.config.train.steps for run in sweep.runs} == {7}
  # A name that sanitizing would make ambiguous, or too long, gets a digest of its overrides.
  names = grid.run_names([{"data.source": "text:a/b"}, {"data.source": "text:a_b"},
                          {"data.eval": "x" * 200}])
  assert names[0].startswith("source=text_a_b-") and names[1].startswith("source=text_a_b-")
  assert len(set(names)) == 3 and len(names[2]) <= grid.MAX_NAME


def test_a_sweep_file_gives_the_base_config_runs_and_seeds(repo_dir, capsys):
  path = os.path.join(repo_dir, "configs", "sweeps", "gpt_norm_position.py")
  sweep = grid.make_sweep(None, ["model.num_layers=1,2"], [], None, path)
  assert sweep.question.startswith("Pre-LN or post-LN")
  assert len(sweep.runs) == 4 * 2 * 3  # the file's 2 × 2, --grid's 2, the file's 3 seeds
  assert sweep.runs[0].overrides == {"model.norm_position": "pre", "model.position": "learned",
                                     "model.num_layers": "1", "train.seed": "0"}
  assert grid.make_sweep(None, [], [], 1, "gpt_norm_position").config == path  # shipped, by name


def test_dry_run_prints_one_train_command_per_run(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  assert cli.main(["sweep", "--config=gpt:tiny", f"--workdir={workdir}",
                   "--grid=model.norm_position=pre,post", "--grid=model.position=learned,rope",
                   "--set=train.steps=5", "--seeds=2", "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 8 and not workdir.exists()
  first = shlex.split(lines[0])
  assert first == ["pretrax", "train", "--config=gpt:tiny",
                   f"--workdir={workdir}/norm_position=pre,position=learned,seed=0",
                   "--config.train.steps=5", "--config.model.norm_position=pre",
                   "--config.model.position=learned", "--config.train.seed=0"]


def _journal(workdir) -> list[dict]:
  with open(workdir / "sweep_log.jsonl") as f:
    return [json.loads(line) for line in f]


def _metric_steps(run) -> list[int]:
  with open(run / "metrics.jsonl") as f:
    return [json.loads(line)["step"] for line in f]


@pytest.mark.slow
def test_a_sweep_stopped_midway_resumes_without_training_a_step_twice(
    tmp_path, shakespeare_text, assert_equal_runs, read_metrics):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(shakespeare_text[:40_000])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
  workdir = tmp_path / "sweep"
  pretrax = [sys.executable, "-m", "pretrax.cli"]
  first, second = workdir / "norm_position=pre,position=learned", \
      workdir / "norm_position=post,position=learned"

  # 1. Two runs; SIGTERM once the second has trained a few steps.
  sweep = subprocess.Popen([*pretrax, *_sweep_args(workdir, corpus)], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  while not ((second / "metrics.jsonl").exists() and len(_metric_steps(second)) >= 3):
    assert sweep.poll() is None and time.time() < deadline, sweep.communicate()[0]
    time.sleep(0.02)
  sweep.send_signal(signal.SIGTERM)
  out = sweep.communicate(timeout=120)[0]
  assert sweep.returncode == 0, out
  assert "stopped by SIGTERM" in out
  stopped_at = max(int(n) for n in os.listdir(second / "checkpoints"))
  assert 3 <= stopped_at < 20, out

  # 2. The same grid grown by a value: the finished run is skipped, the stopped one resumes,
  # two new runs train, two at a time.
  log_size = (first / "train.log").stat().st_size
  args = _sweep_args(workdir, corpus, ("learned", "rope"))
  done = subprocess.run([*pretrax, *args, "--parallel=2"], env=env, text=True,
                        capture_output=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert (first / "train.log").stat().st_size == log_size  # never started again
  events = _journal(workdir)
  trained = {}
  for event in events:
    if event["event"] in ("finished", "stopped"):
      trained.setdefault(event["run"], []).append((event["from_step"], event["step"]))
  assert trained == {first.name: [(0, 20)], second.name: [(0, stopped_at), (stopped_at, 20)],
                     "norm_position=pre,position=rope": [(0, 20)],
                     "norm_position=post,position=rope": [(0, 20)]}
  assert [e["run"] for e in events if e["event"] == "skipped"] == [first.name]
  for run in workdir.iterdir():
    if run.is_dir() and run.name != "plots":
      assert _metric_steps(run) == list(range(1, 21)), run  # each step logged once

  # 3. The table and summary.csv hold each run's own metrics.
  with open(workdir / "summary.csv") as f:
    rows = {row["run"]: row for row in csv.DictReader(f)}
  assert len(rows) == 4
  for name, row in rows.items():
    records = read_metrics(workdir / name)
    assert float(row["train_loss"]) == pytest.approx(records[-1]["loss"], rel=1e-6)
    assert float(row["best_eval_loss"]) == pytest.approx(
        min(r["eval_loss"] for r in records if "eval_loss" in r), rel=1e-6)
    assert int(float(row["steps"])) == 20
  for png in (workdir / "plots").iterdir():
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  # 4. The dry-run command of the stopped-and-resumed run, in another directory, reproduces it.
  printed = subprocess.run([*pretrax, *args, "--dry_run"], env=env, text=True,
                           capture_output=True, timeout=120)
  command = next(shlex.split(line) for line in printed.stdout.splitlines()
                 if f"--workdir={second}" in line)
  replica = tmp_path / "replica"
  command[command.index(f"--workdir={second}")] = f"--workdir={replica}"
  assert command[:2] == ["pretrax", "train"]
  subprocess.run([*pretrax, *command[1:]], env=env, check=True, capture_output=True, timeout=300)
  assert_equal_runs(str(second), str(replica))


def test_a_changed_sweep_never_trains_over_a_run(tmp_path, capsys):
  workdir = tmp_path / "sweep"
  run = workdir / "norm_position=pre"
  run.mkdir(parents=True)
  (run / "sweep_run.json").write_text(json.dumps(
      {"config": "gpt:tiny", "overrides": {"train.steps": "5", "model.norm_position": "pre"}}))
  before = sorted(os.listdir(workdir))
  assert cli.main(["sweep", "--config=gpt:tiny", f"--workdir={workdir}",
                   "--grid=model.norm_position=pre,post", "--set=train.steps=9"]) == 2
  err = capsys.readouterr().err
  assert "holds a run of another sweep (train.steps=5 there, 9 here)" in err
  assert sorted(os.listdir(workdir)) == before and not (workdir / "sweep.json").exists()


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_run_training(tmp_path, shakespeare_text):
  """SIGKILL of the sweep's process: its run gets SIGTERM, checkpoints and exits."""
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(shakespeare_text[:40_000])
  env = dict(os.environ, JAX_PLATFORMS="cpu", PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
  workdir = tmp_path / "sweep"
  run = workdir / "norm_position=pre"
  sweep = subprocess.Popen(
      [sys.executable, "-m", "pretrax.cli", "sweep", "--config=gpt:tiny", f"--workdir={workdir}",
       "--grid=model.norm_position=pre", f"--set=data.source=text:{corpus}",
       *[f"--set={s}" for s in TINY if not s.startswith("train.steps")], "--set=train.steps=5000"],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not ((run / "metrics.jsonl").exists() and len(_metric_steps(run)) >= 2):
    assert sweep.poll() is None and time.time() < deadline
    time.sleep(0.02)
  sweep.kill()
  sweep.wait()
  deadline = time.time() + 60
  with open(run / ".lock", "a") as lock:  # the run holds it until its process ends
    while True:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        assert time.time() < deadline, "the run kept training after its sweep was killed"
        time.sleep(0.1)
  assert "received SIGTERM" in (run / "train.log").read_text()
  stopped_at = max(int(n) for n in os.listdir(run / "checkpoints"))
  assert 2 <= stopped_at < 5000
