"""Weight decay by parameter role, on the real GPT, BERT and classifier parameter trees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pretrax.configs import bert as bert_presets, gpt as gpt_presets
from pretrax.modeling import classifier, models
from pretrax.training import config as config_lib, optimizer as optimizer_lib

# Written out by hand from modeling/: per block, then the model's own parameters.
BLOCK_DECAYED = ["attn/w_q_dhk", "attn/w_k_dhk", "attn/w_v_dhk", "attn/w_o_hkd",
                 "mlp/w_in_df", "mlp/w_out_fd"]
BLOCK_KEPT = ["attn/b_q_hk", "attn/b_k_hk", "attn/b_v_hk", "attn/b_o_d",
              "attn_norm/scale_d", "attn_norm/bias_d", "mlp/b_in_f", "mlp/b_out_d",
              "mlp_norm/scale_d", "mlp_norm/bias_d"]
GPT_DECAYED = ["token_embed_vd"]
GPT_KEPT = ["position_embed_pd", "final_norm/scale_d", "final_norm/bias_d"]
BERT_DECAYED = ["token_embed_vd", "mlm_dense/w_io", "pooler/w_io", "nsp/w_io"]
BERT_KEPT = ["position_embed_pd", "type_embed_yd", "embed_norm/scale_d", "embed_norm/bias_d",
             "mlm_dense/b_o", "mlm_norm/scale_d", "mlm_norm/bias_d", "mlm_bias_v", "pooler/b_o",
             "nsp/b_o"]
HEAD_DECAYED, HEAD_KEPT = ["head/w_io"], ["head/b_o"]


def _model_config(preset):
  config = preset.get_config("tiny")
  config.model.vocab_size = 384
  return config.model


def _params(build) -> dict:
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(build)))


def _expected(decayed, kept, num_layers, prefix="") -> dict[str, bool]:
  out = {prefix + p: True for p in decayed} | {prefix + p: False for p in kept}
  for i in range(num_layers):
    out |= {f"{prefix}blocks/{i}/{p}": True for p in BLOCK_DECAYED}
    out |= {f"{prefix}blocks/{i}/{p}": False for p in BLOCK_KEPT}
  return out


def _mask_by_path(params) -> dict[str, bool]:
  mask = optimizer_lib.decay_mask(params)
  return {"/".join(str(getattr(k, "key", k)) for k in path): bool(v)
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}


def test_decay_mask_gpt():
  model = _model_config(gpt_presets)
  params = _params(lambda: models.build(model, nnx.Rngs(0)))
  assert _mask_by_path(params) == _expected(GPT_DECAYED, GPT_KEPT, model.num_layers)


def test_decay_mask_bert():
  model = _model_config(bert_presets)
  params = _params(lambda: models.build(model, nnx.Rngs(0)))
  assert _mask_by_path(params) == _expected(BERT_DECAYED, BERT_KEPT, model.num_layers)


@pytest.mark.parametrize("preset", [gpt_presets, bert_presets], ids=["gpt", "bert"])
def test_decay_mask_classifier(preset):
  model = _model_config(preset)
  params = _params(lambda: classifier.Classifier(model, 3, rngs=nnx.Rngs(0)))
  decayed, kept = (GPT_DECAYED, GPT_KEPT) if preset is gpt_presets else (BERT_DECAYED, BERT_KEPT)
  want = _expected(decayed, kept, model.num_layers, "backbone/")
  want |= {p: True for p in HEAD_DECAYED} | {p: False for p in HEAD_KEPT}
  assert _mask_by_path(params) == want


def test_decay_mask_gated_mlp_without_biases():
  """SwiGLU adds w_gate_df; use_bias=False removes every bias."""
  model = _model_config(gpt_presets)
  model.activation, model.use_bias, model.norm = "swiglu", False, "rmsnorm"
  params = _params(lambda: models.build(model, nnx.Rngs(0)))
  mask = _mask_by_path(params)
  assert mask["blocks/0/mlp/w_gate_df"] is True
  assert mask["blocks/1/attn_norm/scale_d"] is False
  assert not any("/b_" in p or "bias" in p for p in mask)


def test_unknown_parameter_is_an_error_naming_its_path():
  params = {"blocks": {"0": {"attn": {"w_q_dhk": jnp.ones((2, 2, 2)),
                                      "gain_hk": jnp.ones((2, 2))}}}}
  with pytest.raises(ValueError, match=r"\['blocks'\]\['0'\]\['attn'\]\['gain_hk'\]"):
    optimizer_lib.decay_mask(params)


def test_adamw_decays_kernels_and_not_attention_biases():
  """With zero gradients AdamW's update is -lr * weight_decay * p exactly where decay applies."""
  config = config_lib.Config().optimizer
  config.learning_rate, config.warmup_steps, config.decay = 0.1, 0, "constant"
  config.weight_decay, config.grad_clip = 0.5, 0.0
  params = {"attn": {"w_q_dhk": jnp.ones((2, 2, 2)), "b_q_hk": jnp.ones((2, 2))},
            "position_embed_pd": jnp.ones((4, 2)), "token_embed_vd": jnp.ones((3, 2))}
  opt = optimizer_lib.make_optimizer(config, total_steps=10)
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["attn"]["w_q_dhk"], 1 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(new["token_embed_vd"], 1 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(new["attn"]["b_q_hk"], 1.0)
  np.testing.assert_array_equal(new["position_embed_pd"], 1.0)
