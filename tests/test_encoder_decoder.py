"""The encoder-decoder model: causality, cross-attention isolation of packed examples, packed
equals unpacked, the position signals against their references, every new preset's parameter
count against its reference model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling import models
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.positions import relative_position_bucket, sinusoidal_positions
from pretrax.training import config as config_lib

FAST_COMPILE = {"xla_backend_optimization_level": 0}
FAMILIES = {  # the switches of each preset family, on tiny uneven shapes
    "bart": dict(position="learned", norm_position="post", activation="gelu", embed_norm=True,
                 final_logits_bias=True),
    "t5": dict(position="relative", norm="rmsnorm", use_bias=False, activation="geglu",
               attention_scale=False, tie_embeddings=False, head_dim=12, d_ff=80,
               relative_buckets=8, relative_max_distance=16),
    "transformer": dict(position="sinusoidal", norm_position="post", activation="relu",
                        embed_scale=True),
}


class _Jitted:
  """The model's methods, each compiled (at XLA's fastest-compiling level) on first use: the
  forward passes here run once or twice per shape, so compiling beats running op by op."""

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)
    self.compiled = {}

  def _call(self, method, *args):
    key = (method, *((a.shape, a.dtype) for a in args))
    if key not in self.compiled:
      run = jax.jit(lambda state, *args: getattr(nnx.merge(self.graphdef, state), method)(*args))
      self.compiled[key] = run.lower(self.state, *args).compile(FAST_COMPILE)
    return self.compiled[key](self.state, *args)

  def __call__(self, *args):
    return self._call("__call__", *args)

  def encode(self, *args):
    return self._call("encode", *args)

  def decode(self, *args):
    return self._call("decode", *args)

  def merged(self):
    return nnx.merge(self.graphdef, self.state)


def _model(family: str, **overrides) -> _Jitted:
  config = ModelConfig(family="encoder_decoder", vocab_size=97, num_layers=2, decoder_layers=3,
                       num_heads=3, d_model=48, max_seq_len=32,
                       **(FAMILIES[family] | overrides))
  return _Jitted(models.build(config, nnx.Rngs(params=0)))


def _ids(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).integers(7, 97, shape), jnp.int32)


def _families(*in_ci):
  """Every family, those not in `in_ci` in the long tier (the mask logic is shared)."""
  return [f if f in in_ci else pytest.param(f, marks=pytest.mark.long) for f in FAMILIES]


@pytest.mark.parametrize("family", _families("t5"))  # T5: the decoder's causal buckets
def test_decoder_is_causal(family):
  model = _model(family)
  enc, dec = _ids((2, 11), 0), _ids((2, 9), 1)
  logits = model(enc, dec)
  changed = model(enc, dec.at[:, 5].set(3))
  np.testing.assert_array_equal(np.asarray(logits[:, :5]), np.asarray(changed[:, :5]))
  assert not np.allclose(logits[:, 5:], changed[:, 5:])


@pytest.mark.parametrize("family", _families("t5"))  # the masks and positions are shared
def test_packed_examples_equal_unpacked(family):
  """Two examples packed in one row (segments 1, 2 on both sides, positions restarting, padding
  after) give each example's logits computed alone."""
  model = _model(family)
  enc_a, enc_b, dec_a, dec_b = _ids((1, 7), 2), _ids((1, 5), 3), _ids((1, 4), 4), _ids((1, 6), 5)
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n)))
  enc = pad(jnp.concatenate([enc_a, enc_b], 1), 3)
  dec = pad(jnp.concatenate([dec_a, dec_b], 1), 2)
  enc_seg = jnp.asarray([[1] * 7 + [2] * 5 + [0] * 3])
  dec_seg = jnp.asarray([[1] * 4 + [2] * 6 + [0] * 2])
  enc_pos = jnp.asarray([list(range(7)) + list(range(5)) + [0] * 3])
  dec_pos = jnp.asarray([list(range(4)) + list(range(6)) + [0] * 2])
  packed = model(enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)
  np.testing.assert_allclose(packed[:, :4], model(enc_a, dec_a), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(packed[:, 4:10], model(enc_b, dec_b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", _families("bart"))
def test_cross_attention_sees_all_of_its_example_and_nothing_else(family):
  model = _model(family)
  enc_seg = jnp.asarray([[1] * 6 + [2] * 4 + [0] * 2])
  dec_seg = jnp.asarray([[1] * 3 + [2] * 3])
  enc_pos = jnp.asarray([list(range(6)) + list(range(4)) + [0] * 2])
  dec_pos = jnp.asarray([list(range(3)) * 2])
  memory = model.encode(_ids((1, 12), 6), enc_seg, enc_pos)
  dec = _ids((1, 6), 7)
  decoder = model.merged()

  @jax.jit
  def reached(memory_bsd):  # [T, S]: whether decoder token t's output depends on memory s
    jacobian_tds = jax.jacrev(lambda m: decoder.decode(m, enc_seg, dec, dec_seg, dec_pos)[0])(
        memory_bsd)
    return jnp.abs(jacobian_tds[:, :, 0]).sum((1, 3)) > 0

  np.testing.assert_array_equal(np.asarray(reached(memory)),
                                np.asarray(dec_seg[0][:, None] == enc_seg[0][None, :]))


def test_relative_buckets_match_t5():
  torch = pytest.importorskip("torch")
  t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
  relative = np.arange(-300, 301)[None, :]
  for bidirectional in (True, False):
    want = t5.T5Attention._relative_position_bucket(
        torch.tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128)
    got = relative_position_bucket(jnp.asarray(relative), bidirectional=bidirectional,
                                   num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_relative_buckets_by_hand():
  """Causal, 8 buckets, max distance 16: distances 0..3 exact, then log-spaced 4..7."""
  distance = np.arange(0, 40)
  got = np.asarray(relative_position_bucket(jnp.asarray(-distance), bidirectional=False,
                                            num_buckets=8, max_distance=16))
  want = [d if d < 4 else min(7, 4 + int(math.log(d / 4) / math.log(16 / 4) * 4)) for d in distance]
  np.testing.assert_array_equal(got, want)
  future = relative_position_bucket(jnp.arange(1, 5), bidirectional=False, num_buckets=8,
                                    max_distance=16)
  np.testing.assert_array_equal(np.asarray(future), 0)  # causal: the future is distance 0


def test_sinusoids_by_hand_and_match_marians_table():
  d, positions = 10, np.array([[0, 1, 7]])
  got = np.asarray(sinusoidal_positions(jnp.asarray(positions), d))
  for j, p in enumerate(positions[0]):
    for i in range(5):
      w = 10_000 ** (-2 * i / d)
      np.testing.assert_allclose(got[0, j, i], math.sin(p * w), atol=1e-6)
      np.testing.assert_allclose(got[0, j, 5 + i], math.cos(p * w), atol=1e-6)
  marian = pytest.importorskip("transformers.models.marian.modeling_marian")
  for d in (10, 7):  # odd: one more sin feature than cos
    table = marian.MarianSinusoidalPositionalEmbedding(64, d)
    want = table.create_weight().numpy()
    np.testing.assert_allclose(np.asarray(sinusoidal_positions(jnp.arange(64)[None], d))[0],
                               want, atol=2e-5)


def _params(config: ModelConfig) -> int:
  abstract = nnx.state(nnx.eval_shape(lambda: models.build_model(config)), nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))


def _hf_params(model_class, hf_config) -> int:
  torch = pytest.importorskip("torch")
  with torch.device("meta"):
    return sum(p.numel() for p in model_class(hf_config).parameters())


@pytest.mark.parametrize("variant, shape", [
    ("base", dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    pytest.param("large", dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
                 marks=pytest.mark.long)])
def test_bart_presets_have_barts_parameter_count(variant, shape):
  transformers = pytest.importorskip("transformers")
  config = config_lib.load_preset(f"bart:{variant}").model
  hf = transformers.BartConfig(vocab_size=50_265, max_position_embeddings=1024, **shape)
  # Hugging Face's position tables have 2 rows more (its positions start at 2), and its
  # final_logits_bias is a buffer, not a parameter.
  offset_rows = 2 * 2 * config.d_model
  assert (_params(config) - config.vocab_size
          == _hf_params(transformers.BartForConditionalGeneration, hf) - offset_rows)
  assert round(_params(config) / 1e6) == {"base": 139, "large": 406}[variant]  # the paper's


@pytest.mark.parametrize("variant, shape", [
    ("small", dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6)),
    pytest.param("base", dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
                 marks=pytest.mark.long)])
def test_t5_presets_have_t5_v1_1s_parameter_count(variant, shape):
  transformers = pytest.importorskip("transformers")
  config = config_lib.load_preset(f"t5:{variant}").model
  hf = transformers.T5Config(vocab_size=32_128, feed_forward_proj="gated-gelu",
                             tie_word_embeddings=False, **shape)
  # transformers 5 always ties T5's head to the embedding (and scales it unless
  # tie_word_embeddings=False is passed); v1.1's own head adds V·d.
  untied_head = config.vocab_size * config.d_model if hf.tie_word_embeddings else 0
  assert _params(config) == _hf_params(transformers.T5ForConditionalGeneration, hf) + untied_head
  assert round(_params(config) / 1e6) == {"small": 77, "base": 248}[variant]


def test_transformer_base_preset_has_the_papers_parameter_count():
  config = config_lib.load_preset("transformer:base").model
  v, d, f, layers = 37_000, 512, 2048, 6
  attention = 4 * (d * d + d)
  mlp = d * f + f + f * d + d
  norm = 2 * d
  want = v * d + layers * (attention + mlp + 2 * norm) + layers * (2 * attention + mlp + 3 * norm)
  assert _params(config) == want
  assert round(_params(config) / 1e6) == 63  # "65M" in the paper's table 3, rounded there


@pytest.mark.long  # each family's switches run in CI above, at smaller shapes
@pytest.mark.parametrize("preset", ["bart:tiny", "t5:tiny", "transformer:tiny"])
def test_tiny_presets_build(preset):
  config = config_lib.load_preset(preset)
  config.model.vocab_size = 384
  logits = _Jitted(models.build_model(config.model))(_ids((2, 16), 8), _ids((2, 8), 9))
  assert logits.shape == (2, 8, 384) and bool(jnp.all(jnp.isfinite(logits)))
