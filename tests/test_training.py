"""End-to-end training: the CLI path, resume equality, sharded meshes, optimizer pieces."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pretrax.inference import loading
from pretrax.training import checkpointing, config as config_lib, optimizer as optimizer_lib
from pretrax.training import compile_cache, trainer


@pytest.mark.slow
@pytest.mark.long
def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_gpt_config, read_metrics,
                                              assert_equal_runs):
  # Dropout on: the dropout RNG must resume too.
  config = tiny_gpt_config(tmp_path, **{"model.dropout": "0.1"})
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  trainer.train(config, whole)
  trainer.train(config, split, stop_after=4)
  assert checkpointing.Checkpointer(split, config.checkpoint).latest_step() == 4
  trainer.train(config, split)

  # A crash after the mid-run checkpoint: that async save happened while training went on, so
  # it proves the saved data position is the one at step 4, not a later one.
  crashed = str(tmp_path / "crashed")
  shutil.copytree(whole, crashed)
  shutil.rmtree(os.path.join(crashed, "checkpoints", "8"))
  trainer.train(config, crashed)

  assert loading.load_run(whole).step == 8
  assert [m["step"] for m in read_metrics(whole)] == [2, 4, 6, 8]
  for other in (split, crashed):
    assert_equal_runs(whole, other)


@pytest.mark.slow
# Both long: the encoder-decoder's (8,1,1) and (2,2,2) meshes run the same machinery in CI
# (tests/test_seq2seq_training.py).
@pytest.mark.parametrize("family", [pytest.param("gpt", marks=pytest.mark.long),
                                    pytest.param("bert", marks=pytest.mark.long)])
def test_sharded_meshes_match_one_device(tmp_path, family, tiny_gpt_config, tiny_bert_config,
                                         read_metrics):
  """Data, FSDP and tensor parallel over 8 fake devices give the single-device losses."""
  losses = {}
  meshes = ([(1, 1, 1), (8, 1, 1), (2, 2, 2), (1, 2, 4)] if family == "gpt"
            else [(1, 1, 1), (2, 2, 2)])
  for mesh in meshes:
    overrides = {"mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]), "mesh.tensor": str(mesh[2]),
                 "model.num_heads": "4", "train.steps": "4", "train.eval_every": "0"}
    config = (tiny_gpt_config if family == "gpt" else tiny_bert_config)(tmp_path, **overrides)
    devices = jax.devices()[:np.prod(mesh)]
    workdir = str(tmp_path / f"mesh_{'x'.join(map(str, mesh))}")
    trainer.train(config, workdir, devices=devices)
    losses[mesh] = [m["loss"] for m in read_metrics(workdir)]
  for mesh, values in losses.items():
    np.testing.assert_allclose(values, losses[(1, 1, 1)], rtol=2e-5, err_msg=str(mesh))


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_gpt_config, read_metrics):
  steps = {"train.steps": "3", "train.eval_every": "0", "train.log_every": "1"}
  one = tiny_gpt_config(tmp_path, **steps)
  acc = tiny_gpt_config(tmp_path, **steps, **{"train.grad_accum_steps": "4"})
  trainer.train(one, str(tmp_path / "one"))
  trainer.train(acc, str(tmp_path / "acc"))
  for a, b in zip(read_metrics(str(tmp_path / "one")), read_metrics(str(tmp_path / "acc"))):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)


@pytest.mark.slow
def test_refuses_to_resume_a_different_model(tmp_path, tiny_gpt_config):
  trainer.train(tiny_gpt_config(tmp_path, **{"train.steps": "2", "train.eval_every": "0"}),
                str(tmp_path / "run"))
  with pytest.raises(config_lib.ConfigError, match="model.d_model: saved 32, requested 64"):
    trainer.train(tiny_gpt_config(tmp_path, **{"model.d_model": "64"}), str(tmp_path / "run"))


def test_schedule_warmup_then_decay_and_decay_mask():
  config = config_lib.OptimizerConfig(learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
  schedule = optimizer_lib.learning_rate_schedule(config, 110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.55, atol=1e-6)  # cosine midpoint between 1 and 0.1
  np.testing.assert_allclose(schedule(110), 0.1, atol=1e-6)
  mask = optimizer_lib.decay_mask({"w_io": np.zeros((2, 3)), "b_o": np.zeros(3),
                                   "scale_d": np.zeros(3)})
  assert mask == {"w_io": True, "b_o": False, "scale_d": False}


@pytest.mark.slow
def test_cli_train_eval_score_sample_on_default_corpus(tmp_path, read_metrics):
  """The README path, as real subprocesses, on the built-in corpus."""
  env = dict(os.environ, PRETRAX_DATA_DIR=str(tmp_path / "tfds"), JAX_PLATFORMS="cpu")
  workdir = str(tmp_path / "run")

  def pretrax(*args):
    out = subprocess.run([sys.executable, "-m", "pretrax.cli", *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.rstrip("\n").splitlines()

  pretrax("train", "--config=gpt:tiny", f"--workdir={workdir}",
          "--config.train.steps=30", "--config.train.eval_every=15", "--config.train.log_every=10",
          "--config.checkpoint.every=15", "--config.model.num_layers=1")
  records = read_metrics(workdir)
  assert records[-1]["loss"] < records[0]["loss"] - 1.0  # it learns
  assert {"tokens_per_sec", "mfu", "grad_norm", "lr", "eval_bits_per_byte"} <= set(records[-1])
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["num_layers"] == 1
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))

  result = json.loads(pretrax("eval", f"--workdir={workdir}")[-1])
  assert result["step"] == 30
  np.testing.assert_allclose(result["loss"], records[-1]["eval_loss"], rtol=1e-5)

  text = tmp_path / "text.txt"
  text.write_text("The quick brown fox jumps over the lazy dog. " * 10)
  score = json.loads(pretrax("score", f"--workdir={workdir}", f"--text={text}")[-1])
  assert score["bytes"] == 450 and score["tokens"] == 450  # byte tokenizer: one token per byte
  np.testing.assert_allclose(score["bits_per_byte"], score["loss"] / np.log(2), rtol=1e-6)
  assert score["windows"] > 1  # longer than the 128-token context

  out = "\n".join(pretrax("sample", f"--workdir={workdir}", "--prompt=The module",
                          "--max_new_tokens=40", "--seed=1"))
  assert out.startswith("The module") and len(out.strip()) > len("The module") + 5


@pytest.mark.slow
def test_trained_tokenizer_run_reports_bits_per_byte(tmp_path, tiny_gpt_config, read_metrics):
  """data.tokenizer=train: a SentencePiece model is trained on the corpus and kept in the run."""
  config = tiny_gpt_config(tmp_path, **{"data.tokenizer": "train",
                                        "data.tokenizer_vocab_size": "512", "train.steps": "4",
                                        "train.eval_every": "4"})
  workdir = str(tmp_path / "spm_run")
  trainer.train(config, workdir)
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  assert saved.model.vocab_size == 512  # 512 pieces, already a multiple of 128
  record = read_metrics(workdir)[-1]
  # A subword tokenizer covers several bytes per token: bits/byte < bits/token.
  assert record["eval_bits_per_byte"] < record["eval_loss"] / np.log(2)
  assert record["eval_bytes"] > record["eval_tokens"]


def test_tokenizer_train_cli(tmp_path, capsys, shakespeare_text):
  from pretrax.cli import main as cli
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(shakespeare_text[:100_000])
  code = cli.main(["tokenizer", "train", f"--input={corpus}", f"--output={tmp_path}/tok/spm",
                   "--vocab_size=600", "--model_type=bpe"])
  assert code == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["vocab_size"] == 600 and os.path.exists(tmp_path / "tok" / "spm.model")
  from pretrax.data import tokenizers
  tok = tokenizers.load_tokenizer(str(tmp_path / "tok" / "spm.model"))
  assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
  assert cli.main(["tokenizer", "train", f"--input={tmp_path}/missing.txt",
                   f"--output={tmp_path}/x", "--vocab_size=600"]) == 2


@pytest.mark.slow
def test_chunked_loss_equals_full_logits_loss(tmp_path, tiny_gpt_config, read_metrics):
  """train.loss_chunk_size: same losses and gradient norms without [B, T, V] logits at once."""
  steps = {"train.steps": "3", "train.eval_every": "3", "train.log_every": "1"}
  full = tiny_gpt_config(tmp_path, **steps)
  chunked = tiny_gpt_config(tmp_path, **steps, **{"train.loss_chunk_size": "8"})
  trainer.train(full, str(tmp_path / "full"))
  trainer.train(chunked, str(tmp_path / "chunked"))
  for a, b in zip(read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "chunked"))):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  np.testing.assert_allclose(a["eval_loss"], b["eval_loss"], rtol=1e-5)


@pytest.mark.slow
def test_persistent_compilation_cache_is_written(tmp_path, tiny_gpt_config):
  cache = tmp_path / "xla_cache"
  config = tiny_gpt_config(tmp_path, **{"train.steps": "2", "train.eval_every": "0",
                              "train.compile_cache_dir": str(cache)})
  try:
    trainer.train(config, str(tmp_path / "run"))
  finally:
    compile_cache.enable("")  # back to the session's cache
  assert cache.is_dir() and any(cache.iterdir())  # compiled programs a restart can reuse


def test_compile_cache_directory_is_the_config_then_the_environment_then_the_default(
    monkeypatch, tmp_path):
  monkeypatch.setenv("PRETRAX_COMPILE_CACHE", str(tmp_path / "env"))
  assert compile_cache.resolve(str(tmp_path / "config")) == str(tmp_path / "config")
  assert compile_cache.resolve("") == str(tmp_path / "env")
  assert compile_cache.resolve("off") == ""
  monkeypatch.setenv("PRETRAX_COMPILE_CACHE", "OFF")
  assert compile_cache.resolve("") == ""
  monkeypatch.delenv("PRETRAX_COMPILE_CACHE")
  assert compile_cache.resolve("") == os.path.expanduser(compile_cache.DEFAULT_DIR)
  assert compile_cache.DEFAULT_DIR.endswith(os.path.join("pretrax", "xla"))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm+nsp", pytest.param("mlm", marks=pytest.mark.long)])
def test_bert_pretraining_learns_and_resumes_exactly(tmp_path, objective, tiny_bert_config,
                                                     read_metrics):
  config = tiny_bert_config(tmp_path, **{"data.objective": objective, "model.dropout": "0.1",
                                   "train.steps": "20", "checkpoint.every": "10",
                                   "train.eval_every": "10", "train.log_every": "5"})
  whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
  trainer.train(config, whole)
  trainer.train(config, split, stop_after=10)
  trainer.train(config, split)
  records = read_metrics(whole)
  assert records[-1]["eval_mlm_accuracy"] > 0.1  # chance: 1 / 263 byte tokens
  if objective == "mlm+nsp":
    assert {"nsp_loss", "nsp_accuracy", "eval_nsp_accuracy"} <= set(records[-1])
  a, b = loading.load_run(whole), loading.load_run(split)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  keys = ("step", "loss", "mlm_loss", "mlm_accuracy", "grad_norm", "eval_mlm_loss")
  assert [{k: r.get(k) for k in keys} for r in records] == \
         [{k: r.get(k) for k in keys} for r in read_metrics(split)]
