"""Throughput accounting (FLOPs per token, device peak, MFU), the sums of bits per byte, and the
metrics.jsonl writer."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pretrax.data import files
from pretrax.modeling.config import ModelConfig

# Dense bf16 peak FLOP/s of one JAX device (vendor figures, no sparsity), keyed by a piece of
# the `device_kind` JAX reports; the longest key inside the kind wins ("H100 PCIe" over "H100",
# "TPU v5 lite" over "TPU v5"). NVIDIA kinds are CUDA device names ("NVIDIA H100 80GB HBM3" is
# the SXM part, "NVIDIA A100-SXM4-80GB"); TPU kinds name the generation ("TPU v5" is v5p,
# "TPU v5 lite" v5e, "TPU v6 lite" v6e, "TPU v4 lite" v4i), with the marketing names as aliases.
PEAK_FLOPS = {
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989e12, "H200 NVL": 835e12, "GH200": 989e12,
    "A100": 312e12,  # SXM4 and PCIe, 40 and 80 GB alike
    "L4": 121e12, "L40": 181e12, "L40S": 362e12, "A10G": 125e12,
    "TPU v4": 275e12, "TPU v4 lite": 138e12,
    "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
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


def encoder_decoder_flops_per_token(config: ModelConfig, encoder_len: int,
                                    decoder_len: int) -> float:
  """Training FLOPs per token of an encoder-decoder, a token being one encoder or one decoder
  position (S + T per example; forward + backward = 3 × forward, 2 FLOPs per multiply-add):

    6·S·(L_e·P_block + 2·L_e·a·S)             encoder: weight matmuls, scores and values
    + 6·T·(L_d·(P_block + 2·d·a) + 2·L_d·a·(T + S) + d·V)
                                              decoder: self-attention and MLP, cross-attention's
                                              q and o, its scores over S keys, the LM head
    + 6·S·L_d·2·d·a                           cross-attention's keys and values of the S inputs
  all over S + T, with P_block = 4·d·a + (2 or 3 for gated MLPs)·d·f the weights of one block's
  attention and MLP, a = heads × head_dim, f the MLP width. Embedding lookups, norms and biases
  are left out.
  """
  d, a, f = config.d_model, config.num_heads * config.attn_head_dim, config.mlp_dim
  mlp_mats = 3 if config.activation in ("swiglu", "geglu") else 2
  block = 4 * d * a + mlp_mats * d * f
  l_e, l_d, s, t = config.num_layers, config.num_decoder_layers, encoder_len, decoder_len
  encoder = s * (l_e * block + 2 * l_e * a * s)
  decoder = t * (l_d * (block + 2 * d * a) + 2 * l_d * a * (t + s) + d * config.vocab_size)
  cross_kv = s * l_d * 2 * d * a
  return 6.0 * (encoder + decoder + cross_kv) / (s + t)


def table_peak_flops(device_kind: str) -> float | None:
  """PEAK_FLOPS of the longest key inside `device_kind` (case-insensitive), or None."""
  kind = device_kind.lower()
  matches = [name for name in PEAK_FLOPS if name.lower() in kind]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def device_peak_flops(override: float = 0.0) -> float:
  """Peak FLOP/s of one device: `override`, else the table, else measured with a matmul (CPU)."""
  if override > 0:
    return override
  peak = table_peak_flops(jax.devices()[0].device_kind)
  return peak if peak is not None else _measure_matmul_flops()


def mesh_peak_flops(devices, override: float = 0.0) -> float:
  """Peak FLOP/s of all `devices` together (e.g. `mesh.devices.flat`): the denominator of MFU.

  `override` (config.train.peak_flops) is per device: override × count. Accelerators: the
  table's figure per device, summed (a kind the table lacks is measured once, on this process's
  default device). CPU devices of one process are views of the same host cores (fake devices,
  jax_num_cpu_devices), so each host counts once, at the peak measured here.
  """
  devices = list(devices)
  if override > 0:
    return override * len(devices)
  total, hosts, measured = 0.0, set(), {}

  def measure(kind: str) -> float:
    if kind not in measured:
      measured[kind] = _measure_matmul_flops()
    return measured[kind]

  for device in devices:
    if device.platform == "cpu":
      host = getattr(device, "process_index", 0)
      if host not in hosts:
        hosts.add(host)
        total += measure("cpu")
      continue
    peak = table_peak_flops(device.device_kind)
    total += peak if peak is not None else measure(device.device_kind)
  return total


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


def text_byte_sums(sums_fn, targets_x: jax.Array, weights_x: jax.Array,
                   token_bytes_v: jax.Array) -> dict[str, jax.Array]:
  """A causal LM's eval sums: `sums_fn(weights_x)` plus the two sums bits per byte needs.

  Bits per byte (`pretrax eval` and `pretrax score` alike) = text_loss_sum / ln 2 / byte_sum:
  the loss (nats) summed over the targets that stand for text, those whose token has a nonzero
  UTF-8 byte length in `token_bytes_v` [V] (so not </s>), divided by ln 2 and by the bytes of
  those targets. `sums_fn(w)` -> {"loss_sum", "correct_sum", "weight_sum"} of the same targets
  under weights w (losses.cross_entropy_sums); loss and perplexity stay per token over all
  targets. The causal LM task's summarize (training/tasks/causal_lm.py) computes the ratio.
  """
  bytes_x = token_bytes_v[targets_x]
  text_weights_x = jnp.where(bytes_x > 0, weights_x, 0.0)
  # Under vmap the forward pass, which does not depend on the weights, runs once for both.
  both = jax.vmap(sums_fn)(jnp.stack([weights_x, text_weights_x]))
  sums = jax.tree.map(lambda x: x[0], both)
  return sums | {"text_loss_sum": both["loss_sum"][1],
                 "byte_sum": jnp.sum(bytes_x * text_weights_x)}


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
