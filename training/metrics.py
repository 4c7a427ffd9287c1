"""Throughput accounting (FLOPs per token, device peak, MFU) and the metrics.jsonl writer."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pretrax.data import files
from pretrax.modeling.config import ModelConfig

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def num_params(params, *, exclude_positions: bool = True) -> int:
  """Parameter count N; the learned position table is excluded (it does no matmul FLOPs)."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if exclude_positions and any(getattr(k, "key", None) == "position_embed_pd" for k in path):
      continue
    total += int(np.prod(leaf.shape))
  return total


def flops_per_token(config: ModelConfig, n_params: int, seq_len: int, data=None) -> float:
  """Training FLOPs per token (forward + backward = 3 × forward, 2 FLOPs per multiply-add).

  Decoder: 6N + 12·L·d·T, with N the parameters without the position table (the tied token
  embedding counts: it is the LM head's matmul), d = heads × head_dim, T = sequence length.
  Encoder (MLM): the MLM head (d×d transform + the tied d×V projection) runs only at the P masked
  positions of a T-token row, so it counts P/T times: 6(N − H) + 12·L·d·T + 6·H·P/T with
  H = d² + V·d (the pooler and NSP head, once per row, are left out).
  """
  d_attn = config.num_heads * config.attn_head_dim
  attention = 12.0 * config.num_layers * d_attn * seq_len
  if config.family == "gpt":
    return 6.0 * n_params + attention
  head = config.d_model ** 2 + config.vocab_size * config.d_model
  predictions = data.max_predictions_per_seq if data is not None else seq_len
  return 6.0 * (n_params - head) + attention + 6.0 * head * predictions / seq_len


def device_peak_flops(override: float = 0.0) -> float:
  """Peak FLOP/s of one device: `override`, else the table, else measured with a matmul (CPU)."""
  if override > 0:
    return override
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return _measure_matmul_flops()


def _measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


class MetricsWriter:
  """Appends one JSON object per call to WORKDIR/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()


def truncate_after(path: str, step: int) -> None:
  """Drops metrics.jsonl records past `step` (written after the checkpoint we resume from), and a
  last line cut short by a crash."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
      except ValueError:
        continue  # a line the crash cut short
  files.atomic_write(path, "".join(kept))


def token_bytes(tokenizer, vocab_size: int) -> jax.Array:
  """[vocab_size] float32: the UTF-8 bytes each token id stands for; 0 for special tokens and
  for the ids past the tokenizer's vocabulary (the model's rows padded to a multiple of 128)."""
  table = jnp.asarray(tokenizer.token_byte_lengths(), jnp.float32)
  return jnp.pad(table, (0, vocab_size - table.shape[0]))
