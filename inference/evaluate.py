"""`pretrax eval` (validation metrics of a checkpoint) and `pretrax score` (a text file's loss)."""

import jax
import numpy as np

from pretrax.data.errors import InputError
from pretrax.inference import loading
from pretrax.training import step as step_lib, trainer


def eval_run(workdir: str, split: str | None = None, step: int | None = None,
             max_batches: int | None = None) -> dict:
  """The task's validation metrics of checkpoint `step` (default: latest) on `split`.

  Language models: `max_batches` None uses config.train.eval_steps batches (what training
  reports); 0 uses the whole split. Classifiers: always the whole eval set.
  """
  if max_batches is not None and max_batches < 0:
    raise InputError(f"--batches={max_batches}: must be >= 0 (0 = the whole split)")
  run = loading.load_run(workdir, step)
  name, batches = run.task.eval_data(split, max_batches)
  eval_step = jax.jit(step_lib.make_eval_step(run.graphdef, run.task))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metrics = trainer.evaluate(eval_step, run.params, batches, sharding, run.task)
  return {"step": run.step, "split": name, **metrics}


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

  The metrics are `pretrax eval`'s (the task's eval sums and summary), so bits per byte is
  defined as there.
  """
  run = loading.load_run(workdir, step)
  loading.require_language_model(run, "score", workdir)
  tok = run.tokenizer
  ids = np.concatenate([[tok.bos_id], tok.encode(text)]).astype(np.int32)
  if len(ids) < 2:
    raise InputError("the text to score is empty")
  window = run.config.data.seq_len
  stride = max(window // 2, 1)
  inputs, targets, weights = score_windows(ids, window, stride)
  eval_step = jax.jit(step_lib.make_eval_step(run.graphdef, run.task))
  positions_t = np.arange(window, dtype=np.int32)
  totals = None
  for i in range(0, len(inputs), batch_size):
    rows = slice(i, i + batch_size)
    x, t, w = (np.pad(a[rows], ((0, batch_size - len(a[rows])), (0, 0)))
               for a in (inputs, targets, weights))
    batch = {"inputs": x, "targets": t, "loss_weights": w,
             "segment_ids": np.ones_like(x), "positions": np.broadcast_to(positions_t, x.shape)}
    sums = {k: float(v) for k, v in jax.device_get(eval_step(run.params, batch)).items()}
    totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}  # float64
  metrics = run.task.summarize(totals)
  return {"step": run.step, **metrics,
          "window": window, "stride": stride, "windows": len(inputs),
          "note": f"scored with a sliding window of {window} tokens advancing by {stride}"
                  if len(inputs) > 1 else "fits in one window"}
