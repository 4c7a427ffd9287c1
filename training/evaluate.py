"""`pretrax eval` (validation metrics of a checkpoint) and `pretrax score` (a text file's loss)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.training import checkpointing, mesh as mesh_lib, metrics as metrics_lib
from pretrax.training import step as step_lib, trainer


def _token_bytes(run: checkpointing.Run) -> jax.Array:
  table = jnp.asarray(run.tokenizer.token_byte_lengths(), jnp.float32)
  return jnp.pad(table, (0, run.config.model.vocab_size - table.shape[0]))


def eval_run(workdir: str, split: str | None = None, step: int | None = None,
             max_batches: int | None = None) -> dict:
  """Loss, perplexity, accuracy and bits per byte of checkpoint `step` on `split`.

  `max_batches` None uses config.train.eval_steps batches (what training reports); 0 uses the
  whole split.
  """
  run = checkpointing.load_run(workdir, step)
  if max_batches is None:
    max_batches = run.config.train.eval_steps
  split = split or trainer.sources.eval_split(run.config.data)
  batches = trainer.eval_batches(run.config, run.tokenizer, split, max_batches or None)
  objective = run.config.data.objective
  eval_step = jax.jit(step_lib.make_eval_step(run.graphdef, objective))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metrics = trainer.evaluate(eval_step, run.params, batches, _token_bytes(run), sharding, objective)
  return {"step": run.step, "split": split, **metrics}


def score_windows(ids: np.ndarray, window: int, stride: int):
  """Splits [n] target-bearing ids (ids[0] is BOS) into sliding windows.

  Returns (inputs [W, window], targets [W, window], weights [W, window]): every id after the
  first is a weighted target exactly once, predicted with as much left context as fits (the first
  window scores all its targets; each later window, shifted by `stride`, scores only the targets
  the previous one did not reach).
  """
  n = len(ids) - 1  # targets
  rows_in, rows_tg, rows_w = [], [], []
  scored_until, start = 0, 0  # targets [0, scored_until) are done; target j is ids[j + 1]
  while scored_until < n:
    end = min(start + window, n)
    inputs = ids[start:end]
    targets = ids[start + 1:end + 1]
    weights = (np.arange(start, end) >= scored_until).astype(np.float32)
    pad = window - len(inputs)
    rows_in.append(np.pad(inputs, (0, pad)))
    rows_tg.append(np.pad(targets, (0, pad)))
    rows_w.append(np.pad(weights, (0, pad)))
    scored_until = end
    start += stride
  return np.stack(rows_in), np.stack(rows_tg), np.stack(rows_w)


def score_text(workdir: str, text: str, step: int | None = None, batch_size: int = 8) -> dict:
  """Loss per token (nats), perplexity, accuracy and bits per byte of `text` as one document.

  The metrics are `pretrax eval`'s (step.summarize), so bits per byte is defined as there.
  """
  run = checkpointing.load_run(workdir, step)
  checkpointing.require_causal(run, "score", workdir)
  tok = run.tokenizer
  ids = np.concatenate([[tok.bos_id], tok.encode(text)]).astype(np.int32)
  if len(ids) < 2:
    raise ValueError("the text to score is empty")
  window = run.config.data.seq_len
  stride = max(window // 2, 1)
  inputs, targets, weights = score_windows(ids, window, stride)
  score_sums = jax.jit(functools.partial(_score_sums, run.graphdef))
  token_bytes_v = _token_bytes(run)
  totals = None
  for i in range(0, len(inputs), batch_size):
    rows = slice(i, i + batch_size)
    x, t, w = (np.pad(a[rows], ((0, batch_size - len(a[rows])), (0, 0)))
               for a in (inputs, targets, weights))
    sums = jax.device_get(score_sums(run.params, x, t, w, token_bytes_v))
    sums = {k: float(v) for k, v in sums.items()}  # added in float64 on the host
    totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
  metrics = step_lib.summarize(totals, "causal")
  return {"step": run.step, **metrics,
          "window": window, "stride": stride, "windows": len(inputs),
          "note": f"scored with a sliding window of {window} tokens advancing by {stride}"
                  if len(inputs) > 1 else "fits in one window"}


def _score_sums(graphdef, params, inputs_bt, targets_bt, weights_bt, token_bytes_v):
  """Eval sums of one batch of windows, as make_eval_step's for a causal model."""
  logits_btv = nnx.merge(graphdef, params)(inputs_bt)
  sums_fn = lambda w: step_lib.cross_entropy_sums(logits_btv, targets_bt, w)
  return metrics_lib.text_byte_sums(sums_fn, targets_bt, weights_bt, token_bytes_v)
