"""The dot_product attention path (jax.nn.dot_product_attention) against the einsum reference.

Tolerances, on the largest absolute difference, scaled by the tensor's size: a tensor whose
largest entry is M may differ by tol * max(1, M) (outputs here are O(1), gradients up to ~30):
  float32   tol = 1e-5 for outputs and gradients (the paths differ only in operation order;
            measured: 0 on outputs, <= 2e-6 on gradients of size ~30)
  bfloat16  tol = 1e-2 (bf16 keeps 8 mantissa bits, 2^-8 ~ 4e-3 per rounding; measured: 0, as
            both paths round at the same places)
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling.attention import MultiHeadAttention, attention_mask
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT

# init_std 0.3 (not 0.02) makes activations O(1), so an absolute tolerance means something.
BASE = ModelConfig(vocab_size=64, max_seq_len=16, num_layers=2, num_heads=4, d_model=32,
                   init_std=0.3)
FLOAT32_TOL = 1e-5
BF16_TOL = 1e-2

# Two packed rows of 16 tokens: documents of 7 and 5 tokens then 4 padding tokens, and three
# documents with no padding. Padding queries (segment 0) see no key at all.
SEGMENT_IDS_BT = np.array([[1] * 7 + [2] * 5 + [0] * 4,
                           [1] * 6 + [2] * 6 + [3] * 4], np.int32)


def _positions(segment_ids_bt: np.ndarray) -> np.ndarray:
  """[B, T] positions restarting at 0 in each segment (0 on padding)."""
  pos = np.zeros_like(segment_ids_bt)
  for b, row in enumerate(segment_ids_bt):
    for t in range(1, len(row)):
      pos[b, t] = pos[b, t - 1] + 1 if row[t] == row[t - 1] and row[t] else 0
  return pos


def _pair(module_cls, **overrides):
  """(einsum module, dot_product module) with identical parameters."""
  ref = module_cls(dataclasses.replace(BASE, attention_impl="einsum", **overrides),
                   rngs=nnx.Rngs(0))
  fast = module_cls(dataclasses.replace(BASE, attention_impl="dot_product", **overrides),
                    rngs=nnx.Rngs(1))
  nnx.update(fast, nnx.state(ref, nnx.Param))
  return ref, fast


def _attention_outputs_and_grads(module, x_btd, mask_b1ts, positions_bt, cotangent_btd):
  """Output [B, T, D] (float32) and the gradients of <output, cotangent> w.r.t. x and params."""
  graphdef, params = nnx.split(module, nnx.Param)

  def f(params, x_btd):
    out_btd = nnx.merge(graphdef, params)(x_btd, mask_b1ts, positions_bt)
    return jnp.sum(out_btd.astype(jnp.float32) * cotangent_btd), out_btd

  (_, out_btd), (g_params, g_x) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
      params, x_btd)
  return np.asarray(out_btd, np.float32), np.asarray(g_x, np.float32), g_params


def _assert_close(got, want, tol):
  """max |got - want| <= tol * max(1, max |want|)."""
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, atol=tol * scale, rtol=0)


def _assert_trees_close(got, want, tol):
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want) > 0
  for x, y in zip(flat_got, flat_want):
    _assert_close(x, y, tol)


@pytest.mark.parametrize("dtype,tol", [("float32", FLOAT32_TOL), ("bfloat16", BF16_TOL)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_layer_matches_einsum(dtype, tol, causal):
  # Rotary positions, so that the packed positions matter too.
  ref, fast = _pair(MultiHeadAttention, dtype=dtype, position="rope")
  rng = np.random.default_rng(0)
  b, t = SEGMENT_IDS_BT.shape
  x_btd = jnp.asarray(rng.normal(size=(b, t, BASE.d_model)), jnp.float32)
  cotangent_btd = jnp.asarray(rng.normal(size=(b, t, BASE.d_model)), jnp.float32)
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=causal)
  positions_bt = jnp.asarray(_positions(SEGMENT_IDS_BT))
  out_ref, gx_ref, gp_ref = _attention_outputs_and_grads(ref, x_btd, mask_b1ts, positions_bt,
                                                          cotangent_btd)
  out_fast, gx_fast, gp_fast = _attention_outputs_and_grads(fast, x_btd, mask_b1ts, positions_bt,
                                                             cotangent_btd)
  assert np.isfinite(out_fast).all() and np.isfinite(gx_fast).all()
  assert np.abs(out_ref).max() > 0.3  # the comparison is not between two near-zero tensors
  _assert_close(out_fast, out_ref, tol)
  _assert_close(gx_fast, gx_ref, tol)
  _assert_trees_close(gp_fast, gp_ref, tol)


def test_padding_queries_stay_finite_and_match():
  """Rows that see no key: both paths average all values uniformly, with finite gradients."""
  ref, fast = _pair(MultiHeadAttention)
  seg_bt = jnp.zeros((1, 8), jnp.int32).at[0, :3].set(1)  # 5 padding queries
  mask_b1ts = attention_mask(seg_bt, causal=True)
  assert not np.asarray(mask_b1ts)[0, 0, 3:].any()
  x_btd = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, BASE.d_model)), jnp.float32)
  positions_bt = jnp.arange(8)[None]
  cotangent_btd = jnp.ones_like(x_btd)
  out_ref, gx_ref, _ = _attention_outputs_and_grads(ref, x_btd, mask_b1ts, positions_bt,
                                                     cotangent_btd)
  out_fast, gx_fast, _ = _attention_outputs_and_grads(fast, x_btd, mask_b1ts, positions_bt,
                                                       cotangent_btd)
  assert np.isfinite(out_fast).all() and np.isfinite(gx_fast).all()
  assert np.abs(out_ref[0, 3:]).max() > 0.1  # padding rows are a real (uniform) average
  _assert_close(out_fast, out_ref, FLOAT32_TOL)
  _assert_close(gx_fast, gx_ref, FLOAT32_TOL)


@pytest.mark.parametrize("dtype,tol", [("float32", FLOAT32_TOL), ("bfloat16", BF16_TOL)])
def test_gpt_with_dot_product_matches_einsum_gpt(dtype, tol):
  """A whole GPT (2 layers, packed rows with padding): logits and parameter gradients."""
  ref, fast = _pair(GPT, dtype=dtype)
  rng = np.random.default_rng(3)
  inputs_bt = jnp.asarray(rng.integers(0, BASE.vocab_size, size=SEGMENT_IDS_BT.shape))
  seg_bt, pos_bt = jnp.asarray(SEGMENT_IDS_BT), jnp.asarray(_positions(SEGMENT_IDS_BT))
  targets_bt = jnp.roll(inputs_bt, -1, axis=1)

  def logits_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
      logits_btv = nnx.merge(graphdef, params)(inputs_bt, seg_bt, pos_bt)
      log_p_btv = jax.nn.log_softmax(logits_btv, axis=-1)
      nll_bt = -jnp.take_along_axis(log_p_btv, targets_bt[..., None], axis=-1)[..., 0]
      return jnp.sum(nll_bt * (seg_bt > 0)), logits_btv

    (_, logits_btv), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits_btv), grads

  logits_ref, grads_ref = logits_and_grads(ref)
  logits_fast, grads_fast = logits_and_grads(fast)
  assert np.isfinite(logits_fast).all()
  _assert_close(logits_fast, logits_ref, tol)
  _assert_trees_close(grads_fast, grads_ref, tol)


def test_dot_product_with_attention_dropout_is_an_error():
  config = dataclasses.replace(BASE, attention_impl="dot_product", attention_dropout=0.1)
  with pytest.raises(ValueError, match=r"config\.model\.attention_impl.*attention_dropout"):
    MultiHeadAttention(config, rngs=nnx.Rngs(0))
  # The reference path keeps attention dropout.
  MultiHeadAttention(dataclasses.replace(config, attention_impl="einsum"), rngs=nnx.Rngs(0))


def test_the_two_paths_are_different_programs():
  """Guards the comparisons above against both modules silently taking the same path."""
  ref, fast = _pair(MultiHeadAttention)
  x_btd = jnp.ones((1, 4, BASE.d_model))
  mask_b1ts = attention_mask(jnp.ones((1, 4), jnp.int32), causal=True)
  positions_bt = jnp.arange(4)[None]
  jaxpr_ref = str(jax.make_jaxpr(lambda x: ref(x, mask_b1ts, positions_bt))(x_btd))
  jaxpr_fast = str(jax.make_jaxpr(lambda x: fast(x, mask_b1ts, positions_bt))(x_btd))
  assert jaxpr_ref != jaxpr_fast
