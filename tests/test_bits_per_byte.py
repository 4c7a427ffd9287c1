"""Bits per byte has one definition: `pretrax eval` and `pretrax score` agree on a document."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx

from pretrax.inference import evaluate, loading
from pretrax.modeling import models
from pretrax.training import checkpointing, config as config_lib, optimizer as optimizer_lib
from pretrax.training import run_dir
from pretrax.training import step as step_lib, tasks

# The last paragraph of the corpus: the whole validation split. Multi-byte characters, so bytes
# and characters differ; shorter than one 128-token row, so eval and score see the same context.
DOCUMENT = "Bits per byte — the same from eval and score: naïve café, ✓."
TRAIN = [f"Paragraph {i} of the training text, with words to learn from." for i in range(40)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory holding a freshly initialised tiny GPT at step 0, as `pretrax train` saves
  it before its first step (no train step to compile)."""
  root = tmp_path_factory.mktemp("bpb")
  corpus = root / "corpus.txt"
  corpus.write_text("\n\n".join(TRAIN + [DOCUMENT]) + "\n")
  overrides = {"data.source": f"text:{corpus}", "data.data_dir": str(root / "tfds"),
               "data.txt_documents": "paragraphs",
               "data.validation_fraction": "0.01", "model.num_layers": "1",
               "model.d_model": "32", "model.num_heads": "2", "train.batch_size": "4"}
  config = config_lib.apply_overrides(config_lib.load_preset("gpt:tiny"), overrides)
  assert config.data.seq_len == 128 and config.data.tokenizer == "byte"
  workdir = str(root / "run")
  config = tasks.open_task(config, workdir).config  # writes the tokenizer
  run_dir.write_config(config, workdir)
  params = nnx.to_pure_dict(nnx.state(models.build_model(config.model, 0)))
  optimizer = optimizer_lib.make_optimizer(config.optimizer, config.train.steps)
  checkpointer = checkpointing.Checkpointer(
      workdir, dataclasses.replace(config.checkpoint, async_save=False))
  checkpointer.save(0, step_lib.initial_state(params, optimizer))
  checkpointer.close()
  return workdir


@pytest.mark.slow
def test_eval_and_score_give_the_same_bits_per_byte(run):
  n_bytes = len(DOCUMENT.encode("utf-8"))
  assert n_bytes > len(DOCUMENT)
  evaluated = evaluate.eval_run(run, split="validation", max_batches=0)
  scored = evaluate.score_text(run, DOCUMENT)
  # Eval predicts every byte and the closing </s>; score, every byte.
  assert evaluated["tokens"] == n_bytes + 1 and scored["tokens"] == n_bytes
  assert evaluated["bytes"] == scored["bytes"] == n_bytes
  np.testing.assert_allclose(evaluated["bits_per_byte"], scored["bits_per_byte"],
                             rtol=1e-5, atol=1e-5)
  # Byte tokenizer: every scored target is one byte, so bits per byte is loss / ln 2.
  np.testing.assert_allclose(scored["bits_per_byte"], scored["loss"] / math.log(2), rtol=1e-6)
  # Eval's loss per token still counts the </s> target: its total is score's plus that loss.
  assert evaluated["loss"] * (n_bytes + 1) > scored["loss"] * n_bytes


@pytest.mark.slow
@pytest.mark.parametrize("loss_chunk", [0, 8])
def test_eval_step_sums_by_hand(run, loss_chunk):
  """loss_sum over every weighted target; text_loss_sum and byte_sum over those with bytes."""
  loaded = loading.load_run(run)
  loaded.task.config.train.loss_chunk_size = loss_chunk
  tok = loaded.tokenizer
  rng = np.random.default_rng(0)
  inputs_bt = rng.integers(7, 263, (2, 16)).astype(np.int32)
  targets_bt = rng.integers(7, 263, (2, 16)).astype(np.int32)
  targets_bt[0, 5] = targets_bt[1, 15] = tok.eos_id   # zero-byte targets
  weights_bt = np.ones((2, 16), np.float32)
  weights_bt[1, 12:15] = 0.0
  batch = {"inputs": inputs_bt, "targets": targets_bt, "loss_weights": weights_bt,
           "segment_ids": np.ones((2, 16), np.int32),
           "positions": np.broadcast_to(np.arange(16, dtype=np.int32), (2, 16))}
  eval_step = jax.jit(step_lib.make_eval_step(loaded.graphdef, loaded.task))
  sums = jax.device_get(eval_step(loaded.params, batch))

  logits_btv = np.asarray(loaded.model()(inputs_bt), np.float64)
  log_z_bt = np.log(np.exp(logits_btv).sum(-1))
  nll_bt = log_z_bt - np.take_along_axis(logits_btv, targets_bt[..., None], -1)[..., 0]
  bytes_bt = np.asarray(tok.token_byte_lengths())[targets_bt]
  assert bytes_bt[0, 5] == bytes_bt[1, 15] == 0 and bytes_bt.sum() == 30  # byte ids: 1 each
  text_bt = weights_bt * (bytes_bt > 0)
  np.testing.assert_allclose(sums["loss_sum"], (nll_bt * weights_bt).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["weight_sum"], 29)
  np.testing.assert_allclose(sums["text_loss_sum"], (nll_bt * text_bt).sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["byte_sum"], 27)
  summary = loaded.task.summarize(sums)
  np.testing.assert_allclose(summary["bits_per_byte"],
                             (nll_bt * text_bt).sum() / math.log(2) / 27, rtol=1e-5)
  np.testing.assert_allclose(summary["loss"], (nll_bt * weights_bt).sum() / 29, rtol=1e-5)
