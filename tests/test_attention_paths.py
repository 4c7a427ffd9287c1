"""The fast attention paths against the einsum reference: dot_product (jax.nn.dot_product_attention)
and blockwise (query blocks, causal block skipping, custom VJP).

Every path outputs 0 for padding queries (they see no key), so a layer's padding rows are its
output bias; padding carries no loss, so outputs are compared on real tokens, with gradients of a
loss that, like every pretrax loss, gives padding weight 0.

Tolerances, on the largest absolute difference, scaled by the tensor's size: a tensor whose
largest entry is M may differ by tol * max(1, M) (outputs here are O(1), gradients up to ~30):
  float32   tol = 1e-5 for outputs and gradients (the paths differ only in operation order;
            measured: 0 on outputs, <= 2e-6 on gradients of size ~30)
  bfloat16  dot_product: tol = 1e-2 (bf16 keeps 8 mantissa bits, 2^-8 ~ 4e-3 per rounding;
            measured: 0, as both paths round at the same places). Blockwise rounds elsewhere (the
            score gradient, not the probabilities), so the two bf16 results differ by a few ulps
            (measured up to ~1% of a gradient's scale); it must instead be at most twice as far
            from the float32 result as the bf16 reference is (+ 1e-3 of the scale).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling import models
from pretrax.modeling.attention import MultiHeadAttention, attention_mask
from pretrax.modeling.blockwise_attention import blockwise_attention
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


# Fast paths under test; blockwise with blocks that skip, do not divide T, or cover all of T.
FAST = {"dot_product": {"attention_impl": "dot_product"},
        "blockwise4": {"attention_impl": "blockwise", "attention_block": 4},
        "blockwise5": {"attention_impl": "blockwise", "attention_block": 5},
        "blockwise64": {"attention_impl": "blockwise", "attention_block": 64}}
REAL_BT = SEGMENT_IDS_BT > 0


def _pair(module_cls, fast_impl="dot_product", **overrides):
  """(einsum module, `fast_impl` module) with identical parameters."""
  ref = module_cls(dataclasses.replace(BASE, attention_impl="einsum", **overrides),
                   rngs=nnx.Rngs(0))
  fast = module_cls(dataclasses.replace(BASE, **FAST[fast_impl], **overrides),
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


def _assert_as_accurate(got, want, truth):
  """Each leaf of `got` is at most twice as far from the float32 `truth` as `want` is (plus
  1e-3 of the truth's scale): for bfloat16 paths that round at different places."""
  for g, w, x in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(truth),
                     strict=True):
    x = np.asarray(x, np.float32)
    err_got = np.abs(np.asarray(g, np.float32) - x).max()
    err_want = np.abs(np.asarray(w, np.float32) - x).max()
    assert err_got <= 2 * err_want + 1e-3 * max(1.0, np.abs(x).max()), (err_got, err_want)


@pytest.mark.slow
@pytest.mark.parametrize("fast_impl", ["dot_product", "blockwise4"])
@pytest.mark.parametrize("dtype,tol", [("float32", FLOAT32_TOL), ("bfloat16", BF16_TOL)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_attention_layer_matches_einsum(dtype, tol, causal, fast_impl):
  # Rotary positions, so that the packed positions matter too. The family decides whether
  # blockwise may skip the blocks above the diagonal: it must agree with the mask.
  family = "gpt" if causal else "bert"
  ref, fast = _pair(MultiHeadAttention, fast_impl, dtype=dtype, position="rope", family=family)
  rng = np.random.default_rng(0)
  b, t = SEGMENT_IDS_BT.shape
  x_btd = jnp.asarray(rng.normal(size=(b, t, BASE.d_model)), jnp.float32)
  cotangent_btd = jnp.asarray(rng.normal(size=(b, t, BASE.d_model)) * REAL_BT[..., None],
                              jnp.float32)
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=causal)
  positions_bt = jnp.asarray(_positions(SEGMENT_IDS_BT))
  out_ref, gx_ref, gp_ref = _attention_outputs_and_grads(ref, x_btd, mask_b1ts, positions_bt,
                                                          cotangent_btd)
  out_fast, gx_fast, gp_fast = _attention_outputs_and_grads(fast, x_btd, mask_b1ts, positions_bt,
                                                             cotangent_btd)
  assert np.isfinite(out_fast).all() and np.isfinite(gx_fast).all()
  assert np.abs(out_ref).max() > 0.3  # the comparison is not between two near-zero tensors
  if dtype == "bfloat16" and fast_impl.startswith("blockwise"):
    # Blockwise rounds to bfloat16 at other places than the reference (the score gradient
    # rather than the probabilities), so the two bfloat16 results differ by a few bfloat16 ulps.
    # What must hold: blockwise is as close to the float32 truth as the bfloat16 reference is.
    truth = _attention_outputs_and_grads(
        _pair(MultiHeadAttention, position="rope", family=family)[0], x_btd, mask_b1ts,
        positions_bt, cotangent_btd)
    _assert_as_accurate((out_fast[REAL_BT], gx_fast, gp_fast), (out_ref[REAL_BT], gx_ref, gp_ref),
                        (truth[0][REAL_BT], truth[1], truth[2]))
    return
  _assert_close(out_fast[REAL_BT], out_ref[REAL_BT], tol)
  _assert_close(gx_fast, gx_ref, tol)
  _assert_trees_close(gp_fast, gp_ref, tol)


@pytest.mark.slow
def test_padding_queries_stay_finite_and_match():
  """Rows that see no key: both paths output 0 before the output projection (so the layer
  outputs its bias there), with finite gradients."""
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
  b_o = np.asarray(ref.b_o_d[...])  # the output projection's bias is all a zero row becomes
  np.testing.assert_array_equal(out_ref[0, 3:], np.broadcast_to(b_o, out_ref[0, 3:].shape))
  np.testing.assert_array_equal(out_fast[0, 3:], np.broadcast_to(b_o, out_fast[0, 3:].shape))
  _assert_close(out_fast, out_ref, FLOAT32_TOL)
  _assert_close(gx_fast, gx_ref, FLOAT32_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("fast_impl", ["blockwise5", "blockwise64"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_blockwise_block_sizes_match_einsum(causal, fast_impl):
  """Blocks that do not divide T (5 into 16) and one block covering all of T."""
  test_attention_layer_matches_einsum("float32", FLOAT32_TOL, causal, fast_impl)


@pytest.mark.slow
def test_blockwise_padding_queries_output_zero_with_finite_gradients():
  """Rows that see no key output exactly 0; real rows and gradients equal the reference's."""
  ref, fast = _pair(MultiHeadAttention, "blockwise4")
  seg_bt = jnp.zeros((1, 8), jnp.int32).at[0, :3].set(1)  # 5 padding queries
  mask_b1ts = attention_mask(seg_bt, causal=True)
  x_btd = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, BASE.d_model)), jnp.float32)
  positions_bt = jnp.arange(8)[None]
  cotangent_btd = jnp.ones_like(x_btd).at[0, 3:].set(0.0)
  out_ref, gx_ref, gp_ref = _attention_outputs_and_grads(ref, x_btd, mask_b1ts, positions_bt,
                                                          cotangent_btd)
  out_fast, gx_fast, gp_fast = _attention_outputs_and_grads(fast, x_btd, mask_b1ts, positions_bt,
                                                             cotangent_btd)
  assert np.isfinite(gx_fast).all()
  b_o = np.asarray(fast.b_o_d[...])  # the output projection's bias is all a zero row becomes
  np.testing.assert_array_equal(out_fast[0, 3:], np.broadcast_to(b_o, out_fast[0, 3:].shape))
  _assert_close(out_fast, out_ref, FLOAT32_TOL)
  _assert_close(gx_fast, gx_ref, FLOAT32_TOL)
  _assert_trees_close(gp_fast, gp_ref, FLOAT32_TOL)


def _attention_flops(fn, t: int) -> float:
  q_bthk = jnp.ones((2, t, 4, 8))
  mask_b1ts = attention_mask(jnp.ones((2, t), jnp.int32), causal=True)
  compiled = jax.jit(lambda q: fn(q, q, q, mask_b1ts)).lower(q_bthk).compile()
  analysis = compiled.cost_analysis()
  return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


@pytest.mark.slow
def test_causal_blockwise_skips_the_blocks_above_the_diagonal():
  """With 8 causal blocks the score and value matmuls cover 36 of 64 blocks: well under 3/4 of
  the reference's FLOPs (XLA's own count of the compiled programs)."""
  t = 128
  reference = _attention_flops(
      lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m), t)
  blockwise = _attention_flops(
      lambda q, k, v, m: blockwise_attention(q, k, v, m, causal=True, block=16), t)
  whole = _attention_flops(
      lambda q, k, v, m: blockwise_attention(q, k, v, m, causal=True, block=t), t)
  assert blockwise < 0.75 * whole
  assert whole < 1.25 * reference  # one block does the reference's work


def test_blockwise_argument_errors():
  q_bthk = jnp.ones((1, 8, 2, 4))
  mask_b1ts = attention_mask(jnp.ones((1, 8), jnp.int32), causal=True)
  with pytest.raises(ValueError, match="attention_block must be positive"):
    blockwise_attention(q_bthk, q_bthk, q_bthk, mask_b1ts, causal=True, block=0)
  with pytest.raises(ValueError, match="as many queries as keys"):
    blockwise_attention(q_bthk, q_bthk[:, :4], q_bthk[:, :4], mask_b1ts[..., :4], causal=True,
                        block=4)
  with pytest.raises(ValueError, match=r"config\.model\.attention_block"):
    dataclasses.replace(BASE, attention_impl="blockwise", attention_block=-1).validate()


@pytest.mark.slow
@pytest.mark.parametrize("fast_impl", ["dot_product", "blockwise4"])
@pytest.mark.parametrize("dtype,tol", [("float32", FLOAT32_TOL), ("bfloat16", BF16_TOL)])
def test_gpt_with_fast_attention_matches_einsum_gpt(dtype, tol, fast_impl):
  """A whole GPT (2 layers, packed rows with padding): logits and parameter gradients."""
  ref, fast = _pair(GPT, fast_impl, dtype=dtype)
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
  if dtype == "bfloat16" and fast_impl.startswith("blockwise"):
    logits_truth, grads_truth = logits_and_grads(_pair(GPT)[0])
    _assert_as_accurate((logits_fast[REAL_BT], grads_fast), (logits_ref[REAL_BT], grads_ref),
                        (logits_truth[REAL_BT], grads_truth))
    return
  _assert_close(logits_fast[REAL_BT], logits_ref[REAL_BT], tol)
  _assert_trees_close(grads_fast, grads_ref, tol)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["dot_product", "blockwise"])
def test_fast_paths_with_attention_dropout_are_an_error(impl):
  config = dataclasses.replace(BASE, attention_impl=impl, attention_dropout=0.1)
  with pytest.raises(ValueError, match=r"config\.model\.attention_impl.*attention_dropout"):
    models.build(config, nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"config\.model\.attention_impl.*attention_dropout"):
    config.validate()
  # A layer built around the validation still refuses to drop out silently.
  layer = MultiHeadAttention(config, rngs=nnx.Rngs(0))
  mask_b1ts = attention_mask(jnp.ones((1, 4), jnp.int32), causal=True)
  with pytest.raises(ValueError, match=r"has no attention dropout.*attention_dropout=0"):
    layer(jnp.ones((1, 4, BASE.d_model)), mask_b1ts, jnp.arange(4)[None], nnx.Rngs(dropout=0))
  # The reference path keeps attention dropout.
  models.build(dataclasses.replace(config, attention_impl="einsum"), nnx.Rngs(0))


@pytest.mark.parametrize("fast_impl", ["dot_product", "blockwise4"])
def test_the_paths_are_different_programs(fast_impl):
  """Guards the comparisons above against both modules silently taking the same path."""
  ref, fast = _pair(MultiHeadAttention, fast_impl)
  x_btd = jnp.ones((1, 4, BASE.d_model))
  mask_b1ts = attention_mask(jnp.ones((1, 4), jnp.int32), causal=True)
  positions_bt = jnp.arange(4)[None]
  jaxpr_ref = str(jax.make_jaxpr(lambda x: ref(x, mask_b1ts, positions_bt))(x_btd))
  jaxpr_fast = str(jax.make_jaxpr(lambda x: fast(x, mask_b1ts, positions_bt))(x_btd))
  assert jaxpr_ref != jaxpr_fast
