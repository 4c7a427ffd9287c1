"""Model invariants: the mask, causality, packing, every architecture switch."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling.attention import attention_mask
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT

TINY = ModelConfig(vocab_size=64, max_seq_len=32, num_layers=2, num_heads=2, d_model=32)

SWITCHES = [
    {},
    {"norm": "rmsnorm"},
    {"norm_position": "post"},
    {"activation": "swiglu", "use_bias": False},
    {"activation": "geglu"},
    {"activation": "gelu"},
    {"activation": "relu"},
    {"position": "rope"},
]


def _model(**overrides):
  return GPT(dataclasses.replace(TINY, **overrides), rngs=nnx.Rngs(0))


def test_attention_mask_by_hand():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  got = np.asarray(attention_mask(seg, causal=True))[0, 0]
  want = np.array([[1, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 1, 1, 0],
                   [0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(got, want)
  bidir = np.asarray(attention_mask(seg, causal=False))[0, 0]
  np.testing.assert_array_equal(bidir[0], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(bidir[3], [0, 0, 1, 1, 0])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "gpt2")
def test_future_tokens_do_not_leak(overrides):
  model = _model(**overrides)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 64, size=(2, 16))
  t = 9
  y = x.copy()
  y[:, t:] = rng.integers(0, 64, size=(2, 16 - t))
  lx, ly = model(jnp.asarray(x)), model(jnp.asarray(y))
  np.testing.assert_allclose(lx[:, :t], ly[:, :t], atol=1e-5)
  assert not np.allclose(lx[:, t:], ly[:, t:], atol=1e-3)  # the changed tokens do matter


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"position": "rope"}, {"norm_position": "post"}],
                         ids=["learned", "rope", "post_ln"])
def test_packed_rows_equal_unpacked_documents(overrides):
  model = _model(**overrides)
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, 64, size=7), rng.integers(0, 64, size=5)
  packed = np.zeros((1, 16), np.int64)
  packed[0, :7], packed[0, 7:12] = a, b
  seg = np.array([[1] * 7 + [2] * 5 + [0] * 4])
  pos = np.array([list(range(7)) + list(range(5)) + [0] * 4])
  out = model(jnp.asarray(packed), jnp.asarray(seg), jnp.asarray(pos))
  out_a = model(jnp.asarray(a[None]))
  out_b = model(jnp.asarray(b[None]))
  np.testing.assert_allclose(out[0, :7], out_a[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 7:12], out_b[0], atol=1e-5)
  assert np.isfinite(np.asarray(out)).all()  # padding rows attend to nothing, still finite


def test_gelu_activations_by_hand():
  """Exact GELU x·Φ(x) and its derivative Φ(x) + x·φ(x), from math.erf; tanh GELU from its
  formula. Points cover both tails, where the erf form loses relative accuracy first."""
  from pretrax.modeling.layers import activation
  xs = np.array([-8.0, -3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5, 8.0], np.float32)
  phi = np.array([0.5 * (1 + math.erf(x / math.sqrt(2))) for x in xs.tolist()])
  pdf = np.exp(-0.5 * xs.astype(np.float64) ** 2) / math.sqrt(2 * math.pi)
  np.testing.assert_allclose(activation("gelu", jnp.asarray(xs)), xs * phi, rtol=1e-6, atol=1e-7)
  grad = jax.vmap(jax.grad(lambda x: activation("gelu", x)))(jnp.asarray(xs))
  np.testing.assert_allclose(grad, phi + xs * pdf, rtol=1e-6, atol=1e-7)
  tanh_form = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs ** 3)))
  np.testing.assert_allclose(activation("gelu_tanh", jnp.asarray(xs)), tanh_form, rtol=1e-6,
                             atol=1e-7)


def test_parameters_carry_logical_axes():
  state = nnx.state(_model())
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.shape.__len__(), path
  specs = nnx.get_partition_spec(state)
  assert tuple(specs["token_embed_vd"].get_value()) == ("vocab", "embed")
  assert tuple(specs["blocks"][0]["mlp"]["w_in_df"].get_value()) == ("embed", "mlp")


@pytest.mark.slow
def test_tied_head_uses_the_token_embedding():
  model = _model()
  h = model.hidden_states(jnp.array([[1, 2, 3]]))
  want = jnp.einsum("btd,vd->btv", h, model.token_embed_vd[...])
  np.testing.assert_allclose(model(jnp.array([[1, 2, 3]])), want, atol=1e-5)
  assert not hasattr(model, "lm_head")


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = _model(dtype="bfloat16")
  out = model(jnp.array([[1, 2, 3]]))
  assert out.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model)))
  ref = _model()(jnp.array([[1, 2, 3]]))
  np.testing.assert_allclose(out, ref, atol=5e-2)


@pytest.mark.slow
def test_dropout_only_with_rngs():
  model = _model(dropout=0.5)
  x = jnp.array([[1, 2, 3, 4]])
  np.testing.assert_array_equal(model(x), model(x))
  assert not np.allclose(model(x, rngs=nnx.Rngs(dropout=0)), model(x))


@pytest.mark.parametrize("field,value,match", [
    ("d_model", 31, "not divisible by config.model.num_heads"),
    ("norm", "batchnorm", "config.model.norm"),
    ("activation", "tanh", "config.model.activation"),
    ("num_layers", 0, "config.model.num_layers"),
])
def test_invalid_model_config_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **{field: value}).validate()
