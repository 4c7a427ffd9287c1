"""The attention table and the parameter tree.

Every entry of ATTENTION_IMPLS computes the same function (outputs and gradients) on packed rows
with padding, and outputs exactly 0 for queries that see no key. The parameter paths, shapes,
dtypes and logical axes of small models are pinned by hand, because checkpoints and the Hugging
Face conversion address parameters by path: a refactor that moves one must fail here first.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling import config as model_config
from pretrax.modeling import models
from pretrax.modeling.attention import ATTENTION_IMPLS, MultiHeadAttention, attention_mask
from pretrax.modeling.classifier import Classifier
from pretrax.modeling.config import ModelConfig

# Row 0: documents of 7 and 5 tokens, then 4 padding tokens; row 1: three documents, no padding.
SEGMENT_IDS_BT = np.array([[1] * 7 + [2] * 5 + [0] * 4,
                           [1] * 6 + [2] * 6 + [3] * 4], np.int32)
PADDING_BT = SEGMENT_IDS_BT == 0
TOL = 1e-5  # float32: the implementations differ only in the order of operations

# Every implementation with a block of 5 (for blockwise: one that does not divide T = 16), and
# blockwise once more with one block covering all of T.
CASES = [(name, 5) for name in ATTENTION_IMPLS] + [("blockwise", 64)]


def _qkv(seed: int = 0):
  rng = np.random.default_rng(seed)
  b, t = SEGMENT_IDS_BT.shape
  q, k, v, cotangent = (jnp.asarray(rng.normal(size=(b, t, 4, 8)), jnp.float32) for _ in range(4))
  return q, k, v, cotangent


def _output_and_grads(impl: str, causal: bool, block: int):
  """Output [B, T, H, K] and the gradients of <output, cotangent> w.r.t. q, k and v; the
  cotangent is nonzero on padding rows too, so their gradients are compared as well."""
  q, k, v, cotangent = _qkv()
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=causal)
  fn = ATTENTION_IMPLS[impl]

  def f(q, k, v):
    out_bthk = fn(q, k, v, mask_b1ts, causal=causal, block=block)
    return jnp.sum(out_bthk * cotangent), out_bthk

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return np.asarray(out), [np.asarray(g) for g in grads]


def _assert_close(got, want):
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(got, want, atol=TOL * scale, rtol=0)


def test_the_table_has_every_configurable_implementation():
  assert tuple(ATTENTION_IMPLS) == model_config.ATTENTION_IMPLS


@pytest.mark.slow
@pytest.mark.parametrize("impl,block", CASES, ids=[f"{name}-{block}" for name, block in CASES])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_every_implementation_matches_einsum(causal, impl, block):
  out_ref, grads_ref = _output_and_grads("einsum", causal, block)
  out, grads = _output_and_grads(impl, causal, block)
  assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
  assert np.abs(out_ref[~PADDING_BT]).max() > 0.3  # not a comparison of near-zero tensors
  np.testing.assert_array_equal(out[PADDING_BT], 0.0)  # queries that see no key: exactly 0
  _assert_close(out, out_ref)
  for g, g_ref in zip(grads, grads_ref, strict=True):
    assert np.abs(g_ref).max() > 0.1
    _assert_close(g, g_ref)
  # Padding queries get no gradient: their output is a constant 0.
  np.testing.assert_array_equal(grads[0][PADDING_BT], 0.0)


@pytest.mark.slow
def test_einsum_dropout_keeps_padding_queries_at_zero():
  q, k, v, _ = _qkv()
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=True)
  out = ATTENTION_IMPLS["einsum"](q, k, v, mask_b1ts, causal=True, block=4, dropout_rate=0.5,
                                  dropout_key=jax.random.key(0))
  plain = ATTENTION_IMPLS["einsum"](q, k, v, mask_b1ts, causal=True, block=4)
  np.testing.assert_array_equal(np.asarray(out)[PADDING_BT], 0.0)
  assert not np.allclose(out, plain)  # dropout did act


@pytest.mark.parametrize("impl", [name for name in ATTENTION_IMPLS if name != "einsum"])
def test_only_einsum_has_attention_dropout(impl):
  q, k, v, _ = _qkv()
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=True)
  with pytest.raises(ValueError, match=r"has no attention dropout.*attention_dropout=0"):
    ATTENTION_IMPLS[impl](q, k, v, mask_b1ts, causal=True, block=4, dropout_rate=0.1,
                          dropout_key=jax.random.key(0))
  # A rate without a key (evaluation) is no dropout at all.
  ATTENTION_IMPLS[impl](q, k, v, mask_b1ts, causal=True, block=4, dropout_rate=0.1)


@pytest.mark.slow
def test_the_layer_calls_the_configured_implementation(monkeypatch):
  config = ModelConfig(vocab_size=64, max_seq_len=16, num_layers=1, num_heads=4, d_model=32,
                       attention_impl="blockwise", attention_block=3)
  layer = MultiHeadAttention(config, rngs=nnx.Rngs(0))
  calls = []
  monkeypatch.setitem(ATTENTION_IMPLS, "blockwise",
                      lambda q, k, v, m, **knobs: calls.append(knobs) or jnp.zeros_like(q))
  mask_b1ts = attention_mask(jnp.asarray(SEGMENT_IDS_BT), causal=True)
  layer(jnp.ones((2, 16, 32)), mask_b1ts, jnp.zeros((2, 16), jnp.int32))
  assert calls == [{"causal": True, "block": 3, "dropout_rate": 0.0, "dropout_key": None,
                    "bias_bhts": None}]


# ---- The parameter tree, pinned by hand: path -> (shape, logical axes). ----

D, H, K, F, V, P = 32, 4, 8, 128, 64, 16
SMALL = ModelConfig(vocab_size=V, max_seq_len=P, num_layers=2, num_heads=H, d_model=D)


def _norm(prefix: str, bias: bool = True) -> dict:
  out = {f"{prefix}/scale_d": ((D,), ("embed",))}
  if bias:
    out[f"{prefix}/bias_d"] = ((D,), ("embed",))
  return out


def _block(i: int) -> dict:
  p = f"blocks/{i}"
  return {
      f"{p}/attn/w_q_dhk": ((D, H, K), ("embed", "heads", "kv")),
      f"{p}/attn/w_k_dhk": ((D, H, K), ("embed", "heads", "kv")),
      f"{p}/attn/w_v_dhk": ((D, H, K), ("embed", "heads", "kv")),
      f"{p}/attn/w_o_hkd": ((H, K, D), ("heads", "kv", "embed")),
      f"{p}/attn/b_q_hk": ((H, K), ("heads", "kv")),
      f"{p}/attn/b_k_hk": ((H, K), ("heads", "kv")),
      f"{p}/attn/b_v_hk": ((H, K), ("heads", "kv")),
      f"{p}/attn/b_o_d": ((D,), ("embed",)),
      **_norm(f"{p}/attn_norm"),
      f"{p}/mlp/w_in_df": ((D, F), ("embed", "mlp")),
      f"{p}/mlp/w_out_fd": ((F, D), ("mlp", "embed")),
      f"{p}/mlp/b_in_f": ((F,), ("mlp",)),
      f"{p}/mlp/b_out_d": ((D,), ("embed",)),
      **_norm(f"{p}/mlp_norm"),
  }


GPT_PARAMS = {
    "token_embed_vd": ((V, D), ("vocab", "embed")),
    "position_embed_pd": ((P, D), ("position", "embed")),
    **_block(0), **_block(1),
    **_norm("final_norm"),
}

BERT_PARAMS = {
    "token_embed_vd": ((V, D), ("vocab", "embed")),
    "position_embed_pd": ((P, D), ("position", "embed")),
    "type_embed_yd": ((2, D), (None, "embed")),
    **_norm("embed_norm"),
    **_block(0), **_block(1),
    "mlm_dense/w_io": ((D, D), ("embed", "mlp")),
    "mlm_dense/b_o": ((D,), ("mlp",)),
    **_norm("mlm_norm"),
    "mlm_bias_v": ((V,), ("vocab",)),
    "pooler/w_io": ((D, D), ("embed", "mlp")),
    "pooler/b_o": ((D,), ("mlp",)),
    "nsp/w_io": ((D, 2), ("embed", None)),
    "nsp/b_o": ((2,), (None,)),
}

# No biases, a gated MLP, rotary positions, RMSNorm: the parameters the switches add and remove.
GPT_SWIGLU_PARAMS = {
    "token_embed_vd": ((V, D), ("vocab", "embed")),
    **{f"blocks/{i}/{name}": spec for i in range(2) for name, spec in {
        "attn/w_q_dhk": ((D, H, K), ("embed", "heads", "kv")),
        "attn/w_k_dhk": ((D, H, K), ("embed", "heads", "kv")),
        "attn/w_v_dhk": ((D, H, K), ("embed", "heads", "kv")),
        "attn/w_o_hkd": ((H, K, D), ("heads", "kv", "embed")),
        "attn_norm/scale_d": ((D,), ("embed",)),
        "mlp/w_in_df": ((D, F), ("embed", "mlp")),
        "mlp/w_gate_df": ((D, F), ("embed", "mlp")),
        "mlp/w_out_fd": ((F, D), ("mlp", "embed")),
        "mlp_norm/scale_d": ((D,), ("embed",)),
    }.items()},
    "final_norm/scale_d": ((D,), ("embed",)),
}


def _param_tree(model: nnx.Module) -> dict:
  """{"a/b/c": (shape, logical axes)} of every variable; all must be float32 Params."""
  tree = {}
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    assert isinstance(variable, nnx.Param), (path, type(variable))
    assert variable.get_value().dtype == jnp.float32, path
    tree["/".join(map(str, path))] = (tuple(variable.shape),
                                      tuple(variable.get_metadata().get("out_sharding")))
  return tree


@pytest.mark.parametrize("overrides,want", [
    ({}, GPT_PARAMS),
    ({"family": "bert", "type_vocab_size": 2, "embed_norm": True, "norm_position": "post",
      "activation": "gelu"}, BERT_PARAMS),
    ({"use_bias": False, "activation": "swiglu", "position": "rope", "norm": "rmsnorm"},
     GPT_SWIGLU_PARAMS),
], ids=["gpt", "bert", "gpt-swiglu-rope-nobias"])
def test_parameter_tree_is_pinned(overrides, want):
  config = dataclasses.replace(SMALL, **overrides)
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  assert _param_tree(model) == want
  classifier = nnx.eval_shape(lambda: Classifier(config, 3, rngs=nnx.Rngs(0)))
  head = {"head/w_io": ((D, 3), ("embed", None))}
  if config.use_bias:
    head["head/b_o"] = ((3,), (None,))
  assert _param_tree(classifier) == {**{f"backbone/{p}": spec for p, spec in want.items()}, **head}
