"""Encoder-decoder pretraining on the one trainer: it learns, resumes bit-identically, gives the
single-device losses on sharded meshes, and `pretrax eval` reports it."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest

from pretrax.cli import main as cli
from pretrax.inference import loading
from pretrax.training import config as config_lib, trainer


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["t5:tiny", pytest.param("bart:tiny", marks=pytest.mark.long),
                                    pytest.param("transformer:tiny", marks=pytest.mark.long)])
def test_pretraining_learns_resumes_exactly_and_evaluates(tmp_path, preset, tiny_seq2seq_config,
                                                          read_metrics):
  config = tiny_seq2seq_config(tmp_path, preset, **{
      "model.dropout": "0.1", "train.steps": "24", "checkpoint.every": "12",
      "train.eval_every": "12", "train.log_every": "4"})
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  trainer.train(config, whole)
  trainer.train(config, split, stop_after=12)
  trainer.train(config, split)
  records = read_metrics(whole)
  assert records[-1]["loss"] < records[0]["loss"] - 1.0  # it learns
  assert {"eval_loss", "eval_accuracy", "eval_perplexity", "mfu", "tokens_per_sec"} <= set(
      records[-1])
  a, b = loading.load_run(whole), loading.load_run(split)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  keys = ("step", "loss", "accuracy", "grad_norm", "eval_loss")
  assert [{k: r.get(k) for k in keys} for r in records] == \
         [{k: r.get(k) for k in keys} for r in read_metrics(split)]

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["eval", f"--workdir={whole}"]) in (0, None)
  result = json.loads(out.getvalue().strip().splitlines()[-1])
  assert result["step"] == 24
  np.testing.assert_allclose(result["loss"], records[-1]["eval_loss"], rtol=1e-5)


@pytest.mark.slow
def test_sharded_meshes_match_one_device(tmp_path, tiny_seq2seq_config, read_metrics):
  """Data, FSDP and tensor parallel over 8 fake devices give the single-device losses (T5: the
  relative bias table and the untied head are sharded too; pure data parallelism is tested with
  the other tasks)."""
  losses = {}
  for mesh in [(1, 1, 1), (2, 2, 2)]:
    overrides = {"mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]), "mesh.tensor": str(mesh[2]),
                 "train.steps": "4", "train.eval_every": "0"}
    config = tiny_seq2seq_config(tmp_path, **overrides)
    workdir = str(tmp_path / f"mesh_{'x'.join(map(str, mesh))}")
    trainer.train(config, workdir, devices=jax.devices()[:np.prod(mesh)])
    losses[mesh] = [m["loss"] for m in read_metrics(workdir)]
  for mesh, values in losses.items():
    np.testing.assert_allclose(values, losses[(1, 1, 1)], rtol=2e-5, err_msg=str(mesh))


@pytest.mark.slow
@pytest.mark.long
def test_transformer_learns_translation_pairs(tmp_path, repo_dir, read_metrics):
  """transformer:tiny on 2,000 Multi30k English->German pairs (data.objective=seq2seq)."""
  data = f"{repo_dir}/../shared/data/multi30k"
  train = tmp_path / "train.jsonl"
  with open(f"{data}/train.en-de.jsonl") as f:
    train.write_text("".join(line for line, _ in zip(f, range(2000))))
  config = config_lib.apply_overrides(config_lib.load_preset("transformer:tiny"), {
      "data.objective": "seq2seq", "data.train": str(train),
      "data.eval": f"{data}/val.en-de.jsonl", "data.seq_len": "96", "model.max_seq_len": "96",
      "train.steps": "200", "train.eval_every": "200", "train.log_every": "10",
      "train.eval_steps": "8", "checkpoint.every": "200"})
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir)
  records = read_metrics(workdir)
  assert records[-1]["loss"] < records[0]["loss"] - 1.0
  # Below the entropy of the validation targets' bytes: it uses the context (source or prefix).
  with open(f"{data}/val.en-de.jsonl") as f:
    counts = np.bincount(np.frombuffer("".join(json.loads(line)["target"] for line in f)
                                       .encode(), np.uint8), minlength=256)
  p = counts[counts > 0] / counts.sum()
  assert records[-1]["eval_loss"] < -(p * np.log(p)).sum()
