"""The installed package is exactly pretrax's subpackages, and runs from any directory."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

SUBPACKAGES = {"cli", "configs", "data", "experiments", "inference", "interop", "modeling",
               "training"}


def test_editable_install_exposes_only_the_subpackages():
  for name in SUBPACKAGES:
    assert importlib.util.find_spec(f"pretrax.{name}") is not None, name
  for name in ("tests", "benchmarks", "setup"):
    assert importlib.util.find_spec(f"pretrax.{name}") is None, name


@pytest.mark.slow
def test_non_editable_install_trains_a_preset_from_another_directory(tmp_path, repo_dir):
  """`pip install .` (not editable): the same subpackages, and `--config=gpt:tiny` resolves from
  the installed package in a directory without configs/."""
  source = tmp_path / "source"
  source.mkdir()
  shutil.copy(os.path.join(repo_dir, "setup.py"), source)
  for name in SUBPACKAGES:
    shutil.copytree(os.path.join(repo_dir, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", f"--target={site}", str(source)], check=True,
                 capture_output=True, timeout=300)
  assert {p for p in os.listdir(site / "pretrax")} == SUBPACKAGES

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  corpus = elsewhere / "corpus.txt"
  corpus.write_text("\n\n".join(f"Paragraph {i} of a small corpus, installed." for i in range(60)))
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu",
             PRETRAX_DATA_DIR=str(tmp_path / "tfds"))
  probe = subprocess.run(
      [sys.executable, "-c", "import importlib.util, pretrax.training.trainer as t; "
       "print(t.__file__); print(importlib.util.find_spec('pretrax.tests'))"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert probe.returncode == 0, probe.stderr[-2000:]
  assert probe.stdout.splitlines() == [str(site / "pretrax" / "training" / "trainer.py"), "None"]
  run = subprocess.run(
      [sys.executable, "-m", "pretrax.cli", "train", "--config=gpt:tiny", "--workdir=run",
       f"--config.data.source=text:{corpus}", "--config.train.steps=2",
       "--config.train.eval_every=0", "--config.model.num_layers=1", "--config.data.seq_len=32",
       "--config.train.batch_size=4"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert os.path.isdir(elsewhere / "run" / "checkpoints" / "2")
