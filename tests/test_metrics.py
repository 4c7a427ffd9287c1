"""Throughput accounting: parameter counts, FLOPs per token and peak FLOP/s, against hand counts
and vendor figures."""

import dataclasses

import jax
import pytest
from flax import nnx

from pretrax.configs import bert as bert_presets, gpt as gpt_presets
from pretrax.modeling import models
from pretrax.training import metrics

V = 384  # vocabulary of the tiny presets in these tests


def _tiny(preset):
  config = preset.get_config("tiny")
  config.model.vocab_size = V
  return config


def _params(model_config) -> dict:
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: models.build(model_config, nnx.Rngs(0)))))


# Both tiny presets: L=2 blocks, D=128, H=4 heads of K=32, MLP F=512, P=128 positions, with biases
# and LayerNorm (scale + shift). One block: q/k/v/o kernels 4·D·D, q/k/v biases 3·H·K, o bias D,
# two norms 2·2·D, MLP kernels 2·D·F, MLP biases F + D.
BLOCK = 4 * 128 * 128 + 3 * 4 * 32 + 128 + 2 * 2 * 128 + 2 * 128 * 512 + 512 + 128
assert BLOCK == 198_272
POSITIONS = 128 * 128
# GPT: blocks, token embedding V·D, final norm 2·D.
GPT_N = 2 * BLOCK + V * 128 + 2 * 128
# BERT: blocks, token embedding, token types 2·D, embedding norm 2·D, MLM transform D·D + D and
# its norm 2·D, MLM output bias V, pooler D·D + D, NSP 2·D + 2 (post-LN: no final norm).
BERT_N = (2 * BLOCK + V * 128 + 2 * 128 + 2 * 128 + (128 * 128 + 128) + 2 * 128 + V
          + (128 * 128 + 128) + (2 * 128 + 2))


def test_num_params_gpt():
  params = _params(_tiny(gpt_presets).model)
  assert metrics.num_params(params) == GPT_N == 445_952
  assert metrics.num_params(params, exclude_positions=False) == GPT_N + POSITIONS


def test_num_params_bert():
  params = _params(_tiny(bert_presets).model)
  assert metrics.num_params(params) == BERT_N == 480_130
  assert metrics.num_params(params, exclude_positions=False) == BERT_N + POSITIONS


def test_flops_per_token_gpt():
  """6N + 12·L·d·T with d = H·K = 128, T = 128."""
  config = _tiny(gpt_presets)
  want = 6 * 445_952 + 12 * 2 * 128 * 128
  assert want == 3_068_928
  assert metrics.flops_per_token(config.model, GPT_N, 128, config.data) == want
  # A shorter sequence only shrinks the attention term.
  short = metrics.flops_per_token(config.model, GPT_N, 64, config.data)
  assert short == 6 * GPT_N + 12 * 2 * 128 * 64


def test_flops_per_token_bert():
  """6(N - Hd) + 12·L·d·T + 6·Hd·P/T: MLM head Hd = D² + V·D, P = 20 masked of T = 128."""
  config = _tiny(bert_presets)
  head = 128 * 128 + V * 128
  assert head == 65_536
  want = 6 * (480_130 - head) + 12 * 2 * 128 * 128 + 6 * head * 20 / 128
  assert want == 2_942_220
  assert metrics.flops_per_token(config.model, BERT_N, 128, config.data) == want
  # Without data, every position is predicted: the head counts in full.
  assert metrics.flops_per_token(config.model, BERT_N, 128) == 6 * BERT_N + 12 * 2 * 128 * 128


@pytest.mark.parametrize("preset", [pytest.param("bart:tiny", marks=pytest.mark.long), "t5:tiny"])
def test_flops_per_token_encoder_decoder_agrees_with_xlas_count(preset):
  """The convention (weight matmuls, scores and values, LM head; no norms or elementwise ops)
  against XLA's own FLOP count of a compiled forward + backward pass: within 3% below it."""
  import jax.numpy as jnp
  from pretrax.data import seq2seq_pipeline
  from pretrax.training import config as config_lib
  config = config_lib.load_preset(preset)
  config.model.vocab_size = V
  s, t, b = config.data.seq_len, seq2seq_pipeline.decoder_length(config.data), 2
  graphdef, state = nnx.split(models.build_model(config.model))

  def loss(state):
    logits_btv = nnx.merge(graphdef, state)(jnp.ones((b, s), jnp.int32), jnp.ones((b, t), jnp.int32))
    return jnp.mean(jax.nn.logsumexp(logits_btv, axis=-1))

  fast = {"xla_backend_optimization_level": 0}  # the count, not the code's speed, matters here
  cost = jax.jit(jax.grad(loss)).lower(state).compile(fast).cost_analysis()
  xla = (cost if isinstance(cost, dict) else cost[0])["flops"]
  ours = metrics.encoder_decoder_flops_per_token(config.model, s, t) * b * (s + t)
  assert 0.97 * xla < ours <= xla


@dataclasses.dataclass
class FakeDevice:
  device_kind: str
  platform: str = "gpu"
  process_index: int = 0


# device_kind strings as JAX reports them -> dense bf16 peak FLOP/s from the vendors' datasheets.
KINDS = [
    ("NVIDIA H100 80GB HBM3", 989e12),   # SXM5
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA GH200 480GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("TPU v4", 275e12),
    ("TPU v4 lite", 138e12),             # v4i
    ("TPU v5", 459e12),                  # what a v5p reports
    ("TPU v5 lite", 197e12),             # v5e
    ("TPU v6 lite", 918e12),             # v6e (Trillium)
    ("NVIDIA GeForce RTX 4090", None),
    ("cpu", None),
]


@pytest.mark.parametrize("kind, peak", KINDS)
def test_table_peak_flops(kind, peak):
  assert metrics.table_peak_flops(kind) == peak


@pytest.mark.parametrize("kind, peak", [k for k in KINDS if k[1] is not None])
def test_mesh_peak_flops_accelerators(kind, peak):
  devices = [FakeDevice(kind, "tpu" if kind.startswith("TPU") else "gpu")] * 4
  assert metrics.mesh_peak_flops(devices) == 4 * peak
  assert metrics.mesh_peak_flops(devices, override=1e12) == 4e12


@pytest.fixture
def host_peak(monkeypatch):
  """Replaces the matmul measurement by 1e11 FLOP/s and counts the calls."""
  calls = []
  monkeypatch.setattr(metrics, "_measure_matmul_flops", lambda *a, **k: calls.append(1) or 1e11)
  return calls


@pytest.mark.parametrize("kind, peak", [("TPU v5", 459e12), ("TPU v5 lite", 197e12),
                                        ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 80GB HBM3", 989e12)])
def test_device_peak_flops_of_the_first_device(monkeypatch, host_peak, kind, peak):
  monkeypatch.setattr(jax, "devices", lambda *a: [FakeDevice(kind)])
  assert metrics.device_peak_flops() == peak
  assert not host_peak  # from the table, not measured


def test_mesh_peak_flops_fake_cpu_devices_share_the_host(host_peak):
  devices = jax.devices()  # 8 fake CPU devices (tests/conftest.py), one host's cores
  assert len(devices) == 8 and devices[0].platform == "cpu"
  assert metrics.mesh_peak_flops(devices) == 1e11
  assert len(host_peak) == 1
  assert metrics.mesh_peak_flops(devices, override=2e11) == 8 * 2e11


def test_mesh_peak_flops_cpu_hosts_and_unknown_accelerators(host_peak):
  two_hosts = [FakeDevice("cpu", "cpu", process_index=i // 4) for i in range(8)]
  assert metrics.mesh_peak_flops(two_hosts) == 2e11
  unknown = [FakeDevice("NVIDIA GeForce RTX 4090")] * 2
  assert metrics.mesh_peak_flops(unknown) == 2e11


def test_label_smoothed_cross_entropy_equals_optax_on_smoothed_labels():
  import jax.numpy as jnp
  import numpy as np
  import optax
  from pretrax.training import losses
  rng = np.random.default_rng(0)
  logits_xv = jnp.asarray(rng.normal(size=(6, 11)), jnp.float32)
  targets_x = jnp.asarray(rng.integers(0, 11, 6))
  weights_x = jnp.asarray([1, 1, 0, 1, 1, 0], jnp.float32)
  for eps in (0.0, 0.1):
    labels_xv = optax.smooth_labels(jax.nn.one_hot(targets_x, 11), eps)
    want = jnp.sum(optax.softmax_cross_entropy(logits_xv, labels_xv) * weights_x)
    got = losses.cross_entropy_sums(logits_xv, targets_x, weights_x, label_smoothing=eps)
    np.testing.assert_allclose(got["loss_sum"], want, rtol=1e-6)
    assert got["weight_sum"] == 4
