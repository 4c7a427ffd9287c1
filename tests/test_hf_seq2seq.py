"""Hugging Face interop of the encoder-decoder: BART, T5 v1.1, T5 v1.0 and Marian (the original
Transformer's layout) against `transformers`.

Both directions in float32: a pretrax model with random parameters written as `pretrax export
--format=hf` writes it (config.json + model.safetensors) and loaded with `from_pretrained`; a
random `transformers` model saved with `save_pretrained` and read as `pretrax import --format=hf`
reads it; and the command-line round trip (import_hf, export_hf, import_hf: bit-exact). Shapes are
uneven on purpose: 2 + 3 layers (or 3 + 2), widths 48 / 72, 3 or 6 heads, T5's d_kv !=
d_model / num_heads, d_ff != 4 * d_model, relative buckets other than T5's defaults. The encoder
input has padding (segment id 0 / attention_mask 0), the decoder input too, at its end; logits
are compared at the decoder's real positions within LOGIT_ATOL (measured with transformers 5.24,
pytest -s prints them: export BART 1.4e-6, T5 v1.1 8.1e-6, T5 v1.0 3.9e-6, Marian 9.5e-7 (8.3e-7
with a logits bias); import BART 9.5e-7, T5 v1.1 2.1e-5 at logit std 8, T5 v1.0 1.9e-6, Marian
1.3e-6).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from pretrax.inference import loading
from pretrax.interop import export, hf, hf_seq2seq
from pretrax.modeling import models
from pretrax.modeling.config import ModelConfig
from pretrax.training import config as config_lib

LOGIT_ATOL = 1e-4
VOCAB = 300  # >= the byte tokenizer's 263 ids, which `import_hf --tokenizer=byte` needs
SPECIAL = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)

# pretrax -> HF: the model sections exported (init_std 0.1: logits of order 1, not 1e-2).
_SEQ2SEQ = dict(family="encoder_decoder", vocab_size=VOCAB, max_seq_len=40, init_std=0.1)
_BART = dict(_SEQ2SEQ, position="learned", norm_position="post", activation="gelu",
             embed_norm=True, final_logits_bias=True)
_MARIAN = dict(_SEQ2SEQ, position="sinusoidal", norm_position="post", embed_scale=True)
_T5 = dict(_SEQ2SEQ, position="relative", norm="rmsnorm", norm_eps=1e-6, use_bias=False,
           attention_scale=False, relative_buckets=16, relative_max_distance=24)
PRETRAX = {
    "bart": ModelConfig(**_BART, num_layers=3, decoder_layers=2, d_model=72, num_heads=6,
                        d_ff=200, embed_scale=True),
    "t5_v1_1": ModelConfig(**_T5, num_layers=2, decoder_layers=3, d_model=48, num_heads=3,
                           head_dim=20, d_ff=88, activation="geglu", tie_embeddings=False),
    # init_std 0.2: logits of std ~0.2 through the d_model**-0.5 scale too.
    "t5_v1_0": ModelConfig(**{**_T5, "init_std": 0.2}, num_layers=3, decoder_layers=2,
                           d_model=72, num_heads=6, head_dim=8, d_ff=136, activation="relu",
                           tied_logit_scale=True),
    # A tied head without T5 v1.0's scale: exported with lm_head.weight, a copy.
    "t5_tied_unscaled": ModelConfig(**_T5, num_layers=2, decoder_layers=1, d_model=48,
                                    num_heads=3, head_dim=12, d_ff=72, activation="geglu"),
    # The "transformer" preset's layout; without a logits bias Marian's buffer is written zeros.
    "marian": ModelConfig(**_MARIAN, num_layers=2, decoder_layers=3, d_model=48, num_heads=3,
                          d_ff=80, activation="relu"),
    "marian_bias": ModelConfig(**_MARIAN, num_layers=1, decoder_layers=2, d_model=36,
                               num_heads=2, d_ff=64, activation="gelu", final_logits_bias=True),
}
ARCHITECTURE = {"bart": "BartForConditionalGeneration", "t5": "T5ForConditionalGeneration",
                "marian": "MarianMTModel"}


def _hf_model(name: str):
  """HF -> pretrax: a random `transformers` model, the other shapes than PRETRAX[name]'s."""
  torch.manual_seed(0)
  if name == "bart":
    config = transformers.BartConfig(
        vocab_size=VOCAB, max_position_embeddings=40, d_model=48, encoder_layers=2,
        decoder_layers=3, encoder_attention_heads=3, decoder_attention_heads=3,
        encoder_ffn_dim=80, decoder_ffn_dim=80, dropout=0.0, attention_dropout=0.0,
        scale_embedding=False, init_std=0.1, decoder_start_token_id=2, **SPECIAL)
    model = transformers.BartForConditionalGeneration(config)
  elif name == "marian":
    config = transformers.MarianConfig(
        vocab_size=VOCAB, decoder_vocab_size=VOCAB, max_position_embeddings=40, d_model=72,
        encoder_layers=3, decoder_layers=2, encoder_attention_heads=6, decoder_attention_heads=6,
        encoder_ffn_dim=100, decoder_ffn_dim=100, activation_function="gelu", dropout=0.0,
        attention_dropout=0.0, scale_embedding=True, init_std=0.1, decoder_start_token_id=2,
        forced_eos_token_id=3, **SPECIAL)
    model = transformers.MarianMTModel(config)
  else:
    v1_1 = name == "t5_v1_1"
    shape = (dict(d_model=72, d_kv=10, d_ff=100, num_layers=3, num_decoder_layers=2, num_heads=6)
             if v1_1 else
             dict(d_model=48, d_kv=20, d_ff=56, num_layers=2, num_decoder_layers=3, num_heads=3))
    config = transformers.T5Config(
        vocab_size=VOCAB, **shape, relative_attention_num_buckets=12,
        relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if v1_1 else "relu", tie_word_embeddings=not v1_1,
        decoder_start_token_id=2, **SPECIAL)
    model = transformers.T5ForConditionalGeneration(config)
    if v1_1:  # transformers 5 ties a fresh model's head whatever the config says: untie it
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, shape["d_model"]))
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():  # random biases and norms, so that a swapped one cannot go unnoticed
    for key, p in model.named_parameters():
      if key.endswith("bias") or "norm" in key:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    if name in ("bart", "marian"):  # a buffer in Marian, nonzero only in a converted model
      model.final_logits_bias.normal_(0.0, 0.1, generator=gen)
  return model.eval()


def _inputs(seed: int = 0):
  """[3, 24] encoder and [3, 12] decoder ids with their masks (1 real, 0 padding)."""
  rng = np.random.default_rng(seed)
  enc, dec = rng.integers(7, VOCAB, size=(3, 24)), rng.integers(7, VOCAB, size=(3, 12))
  enc_mask, dec_mask = np.ones_like(enc), np.ones_like(dec)
  enc_mask[1, 17:], enc_mask[2, 9:], dec_mask[2, 7:] = 0, 0, 0
  dec[:, 0] = SPECIAL["bos_token_id"]  # the decoder start token
  enc[enc_mask == 0], dec[dec_mask == 0] = 0, 0
  return enc, enc_mask, dec, dec_mask


def _hf_logits(model, enc, enc_mask, dec, dec_mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec),
                 decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()


@nnx.jit
def _forward(model, enc, dec, enc_segments, dec_segments):
  return model(enc, dec, enc_segments, dec_segments)


def _pretrax_logits(model, enc, enc_mask, dec, dec_mask) -> np.ndarray:
  """Segment ids are the masks: 1 for the one example of a row, 0 for padding."""
  return np.asarray(_forward(model, *map(jnp.asarray, (enc, dec, enc_mask, dec_mask))))


def _max_diff(name: str, ref: np.ndarray, ours: np.ndarray, dec_mask) -> float:
  real = dec_mask.astype(bool)
  diff = float(np.abs(ref - ours)[real].max())
  print(f"{name}: max |logit diff| = {diff:.3g} (logit std {ref[real].std():.3g})")
  assert ref[real].std() > 0.1  # logits large enough for the tolerance to mean something
  return diff


def _params_equal(a: dict, b: dict) -> None:
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# pretrax -> HF.


@pytest.mark.parametrize("name", list(PRETRAX))
def test_export_gives_pretrax_logits_in_transformers(name, tmp_path, random_model):
  config = PRETRAX[name]
  model, params = random_model(config, seed=3)
  hf_config = hf.to_hf_config(config, SPECIAL)  # what export.export_hf writes
  state = hf.to_hf_state(config, params)
  safetensors_numpy.save_file(state, str(tmp_path / export.HF_WEIGHTS),
                              metadata={"format": "pt"})
  (tmp_path / "config.json").write_text(json.dumps(hf_config))
  cls = getattr(transformers, hf_config["architectures"][0])
  assert cls.__name__ == ARCHITECTURE[name.split("_")[0]]
  theirs, info = cls.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected keys
  theirs.eval()
  if name.startswith("t5"):
    tied = theirs.lm_head.weight.data_ptr() == theirs.shared.weight.data_ptr()
    assert tied == config.tie_embeddings
    assert theirs.config.scale_decoder_outputs == config.tied_logit_scale
    assert ("lm_head.weight" in state) == (name != "t5_v1_0")
  inputs = _inputs(1)
  diff = _max_diff(f"export {name}", _hf_logits(theirs, *inputs),
                   _pretrax_logits(model, *inputs), inputs[3])
  assert diff < LOGIT_ATOL
  # And back: the same parameters, bit for bit, and the same config.
  tensors = {k: np.asarray(v) for k, v in state.items()}
  back_config = hf.from_hf_config(hf_config, dataclasses.replace(config, num_layers=1),
                                  tensors=tensors)
  assert back_config == config
  abstract = nnx.to_pure_dict(models.abstract_model(config)[1])
  back, fresh = hf.from_hf_state(config, tensors, abstract)
  assert fresh == []
  _params_equal(back, params)
  if name == "bart":  # some hub checkpoints lack final_logits_bias: zeros, as transformers does
    del tensors["final_logits_bias"]
    zeros = lambda: jax.tree.map(np.zeros_like, params)
    back, fresh = hf.from_hf_state(config, tensors, abstract, zeros)
    assert fresh == ["final_logits_bias"] and not back["final_logits_bias_v"].any()


# --------------------------------------------------------------------------------------------
# HF -> pretrax (-> HF).


@pytest.fixture(scope="module", params=["bart", "t5_v1_1", "t5_v1_0", "marian"])
def saved(request, tmp_path_factory):
  """(name, random HF model, the folder `save_pretrained` wrote it to)."""
  name = request.param
  folder = tmp_path_factory.mktemp(name) / "hf"
  model = _hf_model(name)
  model.save_pretrained(folder)
  return name, model, folder


def test_import_gives_transformers_logits(saved):
  """The folder read as `import_hf` reads it: config.json mapped onto the preset of its
  model_type, the tensors of model.safetensors (the CLI round trip below runs import_hf)."""
  name, theirs, folder = saved
  hf_config = json.loads((folder / "config.json").read_text())
  tensors = export.read_hf_tensors(str(folder))
  base = config_lib.load_preset(hf_seq2seq.ARCHITECTURES[hf_config["model_type"]][3]).model
  cfg = hf.from_hf_config(hf_config, base, tensors=tensors)
  expected = {"bart": dict(position="learned", norm_position="post", activation="gelu",
                           num_layers=2, decoder_layers=3, d_ff=80, tie_embeddings=True),
              "t5_v1_1": dict(position="relative", activation="geglu", num_layers=3,
                              decoder_layers=2, head_dim=10, d_ff=100, relative_buckets=12,
                              tie_embeddings=False, tied_logit_scale=False),
              "t5_v1_0": dict(position="relative", activation="relu", num_layers=2,
                              decoder_layers=3, head_dim=20, d_ff=56, relative_max_distance=20,
                              tie_embeddings=True, tied_logit_scale=True),
              "marian": dict(position="sinusoidal", norm_position="post", embed_norm=False,
                             embed_scale=True, activation="gelu", num_layers=3, decoder_layers=2,
                             num_heads=6, d_ff=100, final_logits_bias=True)}[name]
  assert {k: getattr(cfg, k) for k in expected} == expected
  graphdef, state = models.abstract_model(cfg)
  params, fresh = hf.from_hf_state(cfg, tensors, nnx.to_pure_dict(state))
  assert fresh == []
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  inputs = _inputs(2)
  diff = _max_diff(f"import {name}", _hf_logits(theirs, *inputs),
                   _pretrax_logits(nnx.merge(graphdef, state), *inputs), inputs[3])
  assert diff < LOGIT_ATOL


# The command-line round trip of one variant in the quick suite (the parameter mapping of each is
# checked both ways above); BART and T5 v1.0 as `slow`.
@pytest.mark.parametrize("saved", [pytest.param("bart", marks=pytest.mark.slow), "t5_v1_1",
                                   pytest.param("t5_v1_0", marks=pytest.mark.slow),
                                   pytest.param("marian", marks=pytest.mark.slow)],
                         indirect=True)
def test_import_then_export_is_bit_exact(saved, tmp_path):
  """`pretrax import --format=hf`, then `pretrax export --format=hf` of that run: transformers
  computes the very same logits as the original model, and importing the export gives the same
  run."""
  name, theirs, folder = saved
  workdir = tmp_path / "run"
  result = export.import_hf(str(folder), str(workdir), tokenizer="byte")
  architecture = ARCHITECTURE[name.split("_")[0]]
  assert result["family"] == "encoder_decoder" and result["fresh"] == []
  assert result["architecture"] == architecture
  out = tmp_path / "hf"
  assert export.export_hf(str(workdir), str(out))["architecture"] == architecture
  exported, info = type(theirs).from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  inputs = _inputs(3)
  np.testing.assert_array_equal(_hf_logits(exported.eval(), *inputs), _hf_logits(theirs, *inputs))
  export.import_hf(str(out), str(tmp_path / "back"))  # the folder carries its tokenizer
  a, b = loading.load_run(str(workdir)), loading.load_run(str(tmp_path / "back"))
  assert b.config.model == a.config.model
  _params_equal(a.params, b.params)


# --------------------------------------------------------------------------------------------
# Refusals.


@pytest.mark.parametrize("base,field,value", [
    ("bart", "position", "rope"),
    ("bart", "norm_position", "pre"), ("bart", "norm", "rmsnorm"), ("bart", "use_bias", False),
    ("bart", "embed_norm", False), ("bart", "activation", "geglu"), ("bart", "norm_eps", 1e-6),
    ("bart", "attention_scale", False), ("bart", "head_dim", 8),
    ("bart", "tie_embeddings", False), ("bart", "final_logits_bias", False),
    ("t5_v1_1", "norm", "layernorm"), ("t5_v1_1", "use_bias", True),
    ("t5_v1_1", "norm_position", "post"), ("t5_v1_1", "attention_scale", True),
    ("t5_v1_1", "embed_norm", True), ("t5_v1_1", "embed_scale", True),
    ("t5_v1_1", "final_logits_bias", True),
    ("marian", "embed_norm", True), ("marian", "norm_position", "pre"),
    ("marian", "norm", "rmsnorm"), ("marian", "use_bias", False),
    ("marian", "activation", "swiglu"), ("marian", "attention_scale", False),
    ("marian", "tie_embeddings", False), ("marian", "tied_logit_scale", True),
    ("marian", "head_dim", 8), ("marian", "norm_eps", 1e-6),
])
def test_configs_without_hf_equivalent_are_refused(base, field, value):
  config = PRETRAX[base]
  hf.check_exportable(config)
  with pytest.raises(ValueError, match=f"config.model.{field}={value!r} has no"):
    hf.check_exportable(dataclasses.replace(config, **{field: value}))


def test_shipped_seq2seq_presets_export_and_rope_does_not():
  for preset in ("transformer:tiny", "bart:tiny", "t5:tiny"):
    hf.check_exportable(config_lib.load_preset(preset).model)
  assert hf.to_hf_config(config_lib.load_preset("transformer:tiny").model,
                         SPECIAL)["architectures"] == ["MarianMTModel"]
  model = dataclasses.replace(config_lib.load_preset("transformer:tiny").model, position="rope")
  with pytest.raises(ValueError, match="position='rope' has no BART, T5 or Marian equivalent.*"
                                       "--format=params"):
    hf.check_exportable(model)


def test_marian_logits_bias_needs_final_logits_bias(random_model):
  """A nonzero final_logits_bias buffer: read into a model with final_logits_bias=True (which
  from_hf_config picks from the tensors), refused by one without."""
  config = PRETRAX["marian"]
  _, params = random_model(config, seed=4)
  tensors = hf.to_hf_state(config, params)
  assert not tensors["final_logits_bias"].any()
  tensors["final_logits_bias"] = np.full((1, VOCAB), 0.5, np.float32)
  hf_config = hf.to_hf_config(config, SPECIAL)
  assert hf.from_hf_config(hf_config, config, tensors=tensors).final_logits_bias
  assert not hf.from_hf_config(hf_config, config).final_logits_bias
  abstract = nnx.to_pure_dict(models.abstract_model(config)[1])
  with pytest.raises(ValueError, match="final_logits_bias is nonzero.*final_logits_bias=False"):
    hf.from_hf_state(config, tensors, abstract)


@pytest.mark.parametrize("changes,match", [
    ({"feed_forward_proj": "gated-relu"}, "feed_forward_proj='gated-relu' is not supported"),
    ({"tie_word_embeddings": True, "scale_decoder_outputs": True},
     "scale_decoder_outputs=True.*only before a tied head"),
    ({"model_type": "bart", "architectures": ["BartForSequenceClassification"]},
     "BartForSequenceClassification.*not supported"),
    ({"model_type": "bart", "decoder_attention_heads": 2}, "decoder_attention_heads=2"),
    ({"model_type": "bart", "normalize_before": True}, "normalize_before=True"),
    ({"model_type": "bart", "tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ({"model_type": "marian", "share_encoder_decoder_embeddings": False},
     "share_encoder_decoder_embeddings=False"),
    ({"model_type": "marian", "decoder_vocab_size": 200}, "decoder_vocab_size=200"),
    ({"model_type": "marian", "activation_function": "swish"}, "activation_function='swish'"),
])
def test_unsupported_hf_configs_are_refused(changes, match):
  """T5 v1.1 by default (its head untied in the weights), with `changes` applied."""
  config = hf.to_hf_config(PRETRAX["t5_v1_1"], SPECIAL)
  if changes.get("model_type") in ("bart", "marian"):
    config = hf.to_hf_config(PRETRAX[changes["model_type"]], SPECIAL)
  config.update(changes)
  tensors = {"shared.weight": np.zeros((VOCAB, 48), np.float32),
             "lm_head.weight": np.ones((VOCAB, 48), np.float32)}
  with pytest.raises(ValueError, match=match):
    hf.from_hf_config(config, PRETRAX["t5_v1_1"], tensors=tensors)
