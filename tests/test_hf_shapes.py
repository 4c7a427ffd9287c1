"""Hugging Face import: a config.json that disagrees with its weights is a clear error."""

import json

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pretrax.modeling.config import ModelConfig
from pretrax.interop import export, hf
from pretrax.modeling import models

VOCAB = 384  # the byte tokenizer needs at least 263 rows


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("gpt2")
  config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1,
                                   n_head=2)
  transformers.GPT2LMHeadModel(config).save_pretrained(root)
  return root


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("bert")
  config = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=16, hidden_size=16,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)
  transformers.BertForPreTraining(config).save_pretrained(root)
  return root


def _edited(src, dst, **fields):
  """A copy of HF folder `src` whose config.json has `fields` changed."""
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  config = json.loads((dst / "config.json").read_text())
  config.update(fields)
  (dst / "config.json").write_text(json.dumps(config))
  return dst


@pytest.mark.parametrize("field, value, tensor, stored, wanted", [
    ("n_positions", 8, "transformer.wpe.weight", "(16, 16)", "position_embed_pd (8, 16)"),
    ("n_inner", 32, "transformer.h.0.mlp.c_fc.weight", "(16, 64)", "blocks.0.mlp.w_in_df (16, 32)"),
])
def test_gpt2_config_disagreeing_with_weights(gpt2_dir, tmp_path, field, value, tensor, stored,
                                              wanted):
  folder = _edited(gpt2_dir, tmp_path / "hf", **{field: value})
  with pytest.raises(ValueError) as error:
    export.import_hf(str(folder), str(tmp_path / "run"), tokenizer="byte")
  message = str(error.value)
  assert f"tensor {tensor} has shape {stored}" in message
  assert wanted in message and "config.json" in message
  assert not (tmp_path / "run").exists()


def test_bert_config_disagreeing_with_weights(bert_dir, tmp_path):
  """nn.Linear is [out, in]: the message gives the stored and the converted shape."""
  folder = _edited(bert_dir, tmp_path / "hf", intermediate_size=32)
  with pytest.raises(ValueError) as error:
    export.import_hf(str(folder), str(tmp_path / "run"), tokenizer="byte")
  message = str(error.value)
  assert "tensor bert.encoder.layer.0.intermediate.dense.weight has shape (64, 16)" in message
  assert "blocks.0.mlp.w_in_df (16, 32)" in message and "converts to (16, 64)" in message


def test_tensor_that_cannot_be_split_names_itself(gpt2_dir):
  """A fused q|k|v tensor whose width is not 3 x H x K fails in the split, not after it."""
  model = hf.from_hf_config(json.loads((gpt2_dir / "config.json").read_text()),
                            ModelConfig())
  _, abstract_state = models.abstract_model(model)
  tensors = export.read_hf_tensors(str(gpt2_dir))
  tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((16, 40), np.float32)
  with pytest.raises(ValueError, match=r"tensor transformer\.h\.0\.attn\.c_attn\.weight has shape "
                     r"\(16, 40\).*blocks\.0\.attn\.w_q_dhk \(16, 2, 8\)"):
    hf.from_hf_state(model, tensors, nnx.to_pure_dict(abstract_state), source="test")
