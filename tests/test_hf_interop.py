"""Hugging Face interop: parity with `transformers`, bit-exact round trips, refusals.

Reference models are random-initialized `transformers` models built from small configs (no
download), in eval mode and float32. Tolerances: logits and hidden states within 1e-5 absolute
(measured: GPT-2 logits 1.2e-7; BERT hidden 9.5e-7, MLM 3e-7, NSP 3e-8), losses within 1e-5
relative (measured 6e-8).
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pretrax.inference import loading
from pretrax.data import tokenizers
from pretrax.modeling.config import ModelConfig
from pretrax.inference import evaluate
from pretrax.interop import export, hf
from pretrax.training import config as config_lib, trainer

LOGIT_ATOL = 1e-5
LOSS_RTOL = 1e-5
SMALL = dict(vocab_size=384, positions=64, width=64, layers=2, heads=4)
SPECIAL = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)


def _perturb(model: torch.nn.Module, seed: int) -> None:
  """Random biases and norm parameters, so that a swapped or dropped one cannot go unnoticed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "ln" in name or "LayerNorm" in name:
        p.add_(0.1 * torch.randn(p.shape, generator=gen))


def _gpt2():
  torch.manual_seed(0)
  config = transformers.GPT2Config(
      vocab_size=SMALL["vocab_size"], n_positions=SMALL["positions"], n_embd=SMALL["width"],
      n_layer=SMALL["layers"], n_head=SMALL["heads"], resid_pdrop=0.0, embd_pdrop=0.0,
      attn_pdrop=0.0, **SPECIAL)
  model = transformers.GPT2LMHeadModel(config).eval()
  _perturb(model, 1)
  return model


def _bert():
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=SMALL["vocab_size"], max_position_embeddings=SMALL["positions"],
      hidden_size=SMALL["width"], num_hidden_layers=SMALL["layers"],
      num_attention_heads=SMALL["heads"], intermediate_size=4 * SMALL["width"],
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SPECIAL)
  model = transformers.BertForPreTraining(config).eval()
  _perturb(model, 2)
  return model


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  """(HF model, its folder, the pretrax run imported from it)."""
  root = tmp_path_factory.mktemp("gpt2")
  model = _gpt2()
  model.save_pretrained(root / "hf")
  result = export.import_hf(str(root / "hf"), str(root / "run"), tokenizer="byte")
  assert result["family"] == "gpt" and result["fresh"] == []
  return model, root / "hf", root / "run"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  root = tmp_path_factory.mktemp("bert")
  model = _bert()
  model.save_pretrained(root / "hf")
  result = export.import_hf(str(root / "hf"), str(root / "run"), tokenizer="byte")
  assert result["family"] == "bert" and result["fresh"] == []
  return model, root / "hf", root / "run"


@pytest.fixture(scope="module")
def trained(build_once, tiny_gpt_config):
  """A tiny GPT trained for a few steps with the real trainer."""

  def build(root):
    config = tiny_gpt_config(root, **{"train.steps": "6", "train.eval_every": "0",
                                      "checkpoint.every": "6"})
    trainer.train(config, str(root / "run"))

  root = build_once("hf_trained", build)
  return root, root / "run"


def _padded_batch(seed: int):
  rng = np.random.default_rng(seed)
  ids = rng.integers(7, 263, size=(3, 20))
  mask = np.ones_like(ids)
  mask[1, 13:] = 0
  mask[2, 6:] = 0
  ids[mask == 0] = 0
  return ids, mask


def _params_equal(a: dict, b: dict) -> None:
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# HF -> pretrax parity.


@pytest.mark.slow
def test_gpt2_import_gives_transformers_logits(gpt2):
  model, _, workdir = gpt2
  run = loading.load_run(str(workdir))
  assert run.step == 0 and run.config.model.vocab_size == SMALL["vocab_size"]
  assert run.config.model.activation == "gelu_tanh" and run.config.model.norm_position == "pre"
  ids, mask = _padded_batch(0)
  with torch.no_grad():
    ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  ours = np.asarray(run.model()(jnp.asarray(ids), jnp.asarray(mask)))  # segment ids: 0 = padding
  real = mask.astype(bool)
  diff = np.abs(ref - ours)[real].max()
  print(f"GPT-2 max |logit diff| = {diff:.3g}")
  assert diff < LOGIT_ATOL


def test_gpt2_model_folder_imports_the_same_parameters(gpt2, tmp_path):
  """A headless GPT2Model folder (keys without "transformer.") gives the same parameters."""
  model, _, workdir = gpt2
  model.transformer.save_pretrained(tmp_path / "base")
  result = export.import_hf(str(tmp_path / "base"), str(tmp_path / "run"), tokenizer="byte")
  assert result["architecture"] == "GPT2Model" and result["fresh"] == []
  _params_equal(loading.load_run(str(tmp_path / "run")).params,
                loading.load_run(str(workdir)).params)


def _bert_outputs(run, ids, mask, types, positions):
  model = run.model()
  hidden = model.hidden_states(jnp.asarray(ids), jnp.asarray(mask),
                               token_type_ids_bt=jnp.asarray(types))
  mlm = model.mlm_logits(hidden, jnp.asarray(positions))
  nsp = model.nsp_logits(model.pooled(hidden))
  return np.asarray(hidden), np.asarray(mlm), np.asarray(nsp)


def _bert_inputs():
  ids, mask = _padded_batch(1)
  types = np.zeros_like(ids)
  types[0, 9:] = 1
  types[1, 7:13] = 1
  types[2, 3:6] = 1
  positions = np.array([[1, 5, 12, 19], [0, 4, 8, 12], [1, 2, 4, 5]])  # real tokens only
  return ids, mask, types, positions


@pytest.mark.slow
def test_bert_import_gives_transformers_mlm_and_nsp_logits(bert):
  model, _, workdir = bert
  run = loading.load_run(str(workdir))
  cfg = run.config.model
  assert (cfg.norm_position, cfg.activation, cfg.embed_norm, cfg.type_vocab_size) == \
      ("post", "gelu", True, 2)
  ids, mask, types, positions = _bert_inputs()
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types), output_hidden_states=True)
  ref_hidden = out.hidden_states[-1].numpy()
  ref_mlm = np.take_along_axis(out.prediction_logits.numpy(), positions[..., None], axis=1)
  ref_nsp = out.seq_relationship_logits.numpy()
  hidden, mlm, nsp = _bert_outputs(run, ids, mask, types, positions)
  real = mask.astype(bool)
  diffs = {"hidden": np.abs(ref_hidden - hidden)[real].max(),
           "mlm": np.abs(ref_mlm - mlm).max(), "nsp": np.abs(ref_nsp - nsp).max()}
  print("BERT max |diff|: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
  assert max(diffs.values()) < LOGIT_ATOL, diffs


@pytest.mark.slow
def test_bert_headless_folders_get_fresh_heads(bert, tmp_path):
  """BertForMaskedLM lacks pooler + NSP, BertModel the MLM head + NSP: those start fresh."""
  model, hf_dir, workdir = bert
  full = loading.load_run(str(workdir))
  mlm_model = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
  mlm_model.save_pretrained(tmp_path / "mlm")
  model.bert.save_pretrained(tmp_path / "base")

  mlm = export.import_hf(str(tmp_path / "mlm"), str(tmp_path / "mlm_run"), tokenizer="byte")
  assert mlm["architecture"] == "BertForMaskedLM"
  assert sorted(mlm["fresh"]) == sorted(["pooler.dense.weight", "pooler.dense.bias",
                                         "cls.seq_relationship.weight",
                                         "cls.seq_relationship.bias"])
  base = export.import_hf(str(tmp_path / "base"), str(tmp_path / "base_run"), tokenizer="byte")
  assert base["architecture"] == "BertModel"
  assert {n.split(".")[0] for n in base["fresh"]} == {"cls"} and len(base["fresh"]) == 7

  mlm_run = loading.load_run(str(tmp_path / "mlm_run"))
  base_run = loading.load_run(str(tmp_path / "base_run"))
  for key in ("blocks", "token_embed_vd", "embed_norm", "mlm_dense", "mlm_bias_v"):
    _params_equal(mlm_run.params[key], full.params[key])
  for key in ("blocks", "token_embed_vd", "embed_norm", "pooler"):
    _params_equal(base_run.params[key], full.params[key])
  assert not np.array_equal(base_run.params["nsp"]["w_io"], full.params["nsp"]["w_io"])

  ids, mask, types, positions = _bert_inputs()
  with torch.no_grad():
    ref = mlm_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types)).logits.numpy()
  _, ours, _ = _bert_outputs(mlm_run, ids, mask, types, positions)
  assert np.abs(np.take_along_axis(ref, positions[..., None], axis=1) - ours).max() < LOGIT_ATOL


# --------------------------------------------------------------------------------------------
# pretrax -> HF -> pretrax.


def _export_and_reimport(workdir, tmp_path):
  out = tmp_path / "hf"
  summary = export.export_hf(str(workdir), str(out))
  assert {"config.json", "model.safetensors", export.PRETRAX_TOKENIZER} <= set(os.listdir(out))
  export.import_hf(str(out), str(tmp_path / "back"))  # the folder carries its tokenizer
  a = loading.load_run(str(workdir))
  b = loading.load_run(str(tmp_path / "back"))
  _params_equal(a.params, b.params)
  assert b.config.model == a.config.model and b.config.data == a.config.data
  assert b.tokenizer.describe() == a.tokenizer.describe()
  return out, summary


@pytest.mark.slow
def test_gpt_roundtrip_is_bit_exact_and_loads_in_transformers(trained, tmp_path):
  _, workdir = trained
  out, summary = _export_and_reimport(workdir, tmp_path)
  assert summary["architecture"] == "GPT2LMHeadModel"
  hf_config = json.loads((out / "config.json").read_text())
  assert hf_config["vocab_size"] == 384  # the byte tokenizer's 263 ids padded to 3 * 128
  special = ("pad_token_id", "bos_token_id", "eos_token_id")
  assert [hf_config[k] for k in special] == [0, 2, 3]
  assert hf_config["activation_function"] == "gelu_new"
  tok = json.loads((out / export.PRETRAX_TOKENIZER).read_text())
  assert tok["kind"] == "byte" and tok["special_token_ids"]["mask"] == 6
  model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected keys
  assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


def test_bert_roundtrip_is_bit_exact_and_loads_in_transformers(bert, tmp_path):
  model, _, workdir = bert
  out, summary = _export_and_reimport(workdir, tmp_path)
  assert summary["architecture"] == "BertForPreTraining"
  ids, mask, types, _ = _bert_inputs()
  inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types))
  exported, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  with torch.no_grad():
    a, b = model(**inputs), exported.eval()(**inputs)
    np.testing.assert_array_equal(a.prediction_logits.numpy(), b.prediction_logits.numpy())
    np.testing.assert_array_equal(a.seq_relationship_logits.numpy(),
                                  b.seq_relationship_logits.numpy())
    for cls in (transformers.BertForMaskedLM, transformers.BertModel):
      other = cls.from_pretrained(out).eval()
      first = other(**inputs)[0].numpy()
      expected = a.prediction_logits if cls is transformers.BertForMaskedLM else None
      if expected is not None:
        np.testing.assert_array_equal(first, expected.numpy())
      else:
        np.testing.assert_array_equal(first, model.bert(**inputs).last_hidden_state.numpy())


@pytest.mark.slow
def test_sentencepiece_tokenizer_travels_with_the_export(trained, tmp_path):
  """tokenizer.model is copied into the HF folder and read back (checked by sha256) on import."""
  root, workdir = trained
  run_dir = tmp_path / "spm_run"
  shutil.copytree(workdir, run_dir)
  os.remove(run_dir / "tokenizer.json")
  texts = [(root / "shakespeare.txt").read_text()]
  spm = tokenizers.train_sentencepiece(texts, str(tmp_path / "spm"), vocab_size=360)
  spm.save(str(run_dir))  # 360 ids fit the run's 384-row embedding
  export.export_hf(str(run_dir), str(tmp_path / "hf"))
  assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == \
      (tmp_path / "spm.model").read_bytes()
  export.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
  back = loading.load_run(str(tmp_path / "back"))
  assert back.tokenizer.describe() == spm.describe()


# --------------------------------------------------------------------------------------------
# A trained run: HF loss equals `pretrax score`; params-only export.


def _hf_window_loss(model, ids: np.ndarray, window: int) -> float:
  """The mean loss over exactly the windows and weights `score_text` uses."""
  inputs, targets, weights = evaluate.score_windows(ids, window, max(window // 2, 1))
  with torch.no_grad():
    logits = model(torch.tensor(inputs, dtype=torch.long)).logits.double()
  targets = torch.tensor(targets, dtype=torch.long)[..., None]
  nll = -torch.log_softmax(logits, -1).gather(-1, targets)
  w = torch.tensor(weights, dtype=torch.float64)
  return float((nll[..., 0] * w).sum() / w.sum())


@pytest.mark.slow
def test_exported_run_scores_like_pretrax_score(trained, tmp_path):
  _, workdir = trained
  out = tmp_path / "hf"
  export.export_hf(str(workdir), str(out))
  model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  run = loading.load_run(str(workdir))
  window = run.config.data.seq_len
  windows = []
  for text in ("To be, or not to be", "All the world's a stage, and all the men and women "
               "merely players; they have their exits and their entrances."):
    ours = evaluate.score_text(str(workdir), text)
    ids = np.concatenate([[run.tokenizer.bos_id], run.tokenizer.encode(text)])
    theirs = _hf_window_loss(model, ids, window)
    print(f"{ours['windows']} window(s): pretrax loss {ours['loss']:.7f}, HF {theirs:.7f}")
    np.testing.assert_allclose(theirs, ours["loss"], rtol=LOSS_RTOL)
    windows.append(ours["windows"])
  assert windows[0] == 1 and windows[1] > 1  # shorter than the context; several windows


@pytest.mark.slow
def test_export_params_is_a_run_directory_for_eval(trained, tmp_path):
  root, workdir = trained
  out = tmp_path / "params"
  summary = export.export_params(str(workdir), str(out))
  print(f"params-only checkpoint {summary['checkpoint_bytes']:,} bytes vs full "
        f"{summary['source_checkpoint_bytes']:,} bytes")
  assert summary["checkpoint_bytes"] < 0.5 * summary["source_checkpoint_bytes"]
  a, b = loading.load_run(str(workdir)), loading.load_run(str(out))
  assert b.step == a.step == 6 and b.config == a.config
  _params_equal(a.params, b.params)
  ids, _ = _padded_batch(2)
  np.testing.assert_array_equal(np.asarray(a.model()(jnp.asarray(ids))),
                                np.asarray(b.model()(jnp.asarray(ids))))
  text = "Now is the winter of our discontent"
  assert evaluate.score_text(str(out), text)["loss"] == \
      evaluate.score_text(str(workdir), text)["loss"]


@pytest.mark.slow
def test_imported_run_continues_pretraining(gpt2, trained, tmp_path, tiny_gpt_config):
  """trainer.train resumes checkpoint 0 (no data-iterator item) of an imported run."""
  _, hf_dir, _ = gpt2
  corpus = tiny_gpt_config(trained[0]).data  # the trained run's corpus, already built
  workdir = tmp_path / "run"
  export.import_hf(str(hf_dir), str(workdir), tokenizer="byte")
  imported = loading.load_run(str(workdir))
  config = config_lib.apply_overrides(imported.config, {
      "data.source": corpus.source, "data.data_dir": corpus.data_dir, "data.seq_len": "32",
      "train.steps": "2", "train.batch_size": "8", "train.eval_every": "0",
      "train.log_every": "1", "optimizer.learning_rate": "1e-7", "optimizer.warmup_steps": "0"})
  trainer.train(config, str(workdir))
  after = loading.load_run(str(workdir))
  assert after.step == 2
  # Two tiny steps away from the imported weights (a fresh init would be far from them).
  for x, y in zip(jax.tree.leaves(imported.params), jax.tree.leaves(after.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Refusals.


@pytest.mark.parametrize("family,field,value", [
    ("gpt", "position", "rope"), ("gpt", "activation", "swiglu"), ("gpt", "activation", "geglu"),
    ("gpt", "norm", "rmsnorm"), ("gpt", "norm_position", "post"), ("gpt", "use_bias", False),
    ("gpt", "head_dim", 32), ("gpt", "type_vocab_size", 2),
    ("bert", "norm_position", "pre"), ("bert", "embed_norm", False),
    ("bert", "type_vocab_size", 0), ("bert", "position", "rope"),
    ("gpt", "position", "sinusoidal"), ("gpt", "embed_scale", True),
    ("bert", "attention_scale", False),
])
def test_configs_without_hf_equivalent_are_refused(family, field, value):
  base = {"gpt": ModelConfig(family="gpt", vocab_size=384, d_model=64, num_heads=4),
          "bert": ModelConfig(family="bert", vocab_size=384, d_model=64, num_heads=4,
                              norm_position="post", activation="gelu", type_vocab_size=2,
                              embed_norm=True)}[family]
  hf.check_exportable(base)
  with pytest.raises(ValueError, match=f"config.model.{field}={value!r} has no"):
    hf.check_exportable(dataclasses.replace(base, **{field: value}))


@pytest.mark.slow
def test_export_refuses_rope_run_before_reading_weights(trained, tmp_path):
  _, workdir = trained
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  config.model.position = "rope"
  (tmp_path / "run").mkdir()
  config_lib.save_json(config, str(tmp_path / "run" / "config.json"))
  with pytest.raises(ValueError, match="config.model.position='rope' has no GPT-2 equivalent"):
    export.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_import_errors_are_clear(gpt2, tmp_path):
  _, hf_dir, _ = gpt2
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json"):
    export.import_hf(str(tmp_path / "empty"), str(tmp_path / "a"), tokenizer="byte")

  llama = tmp_path / "llama"
  llama.mkdir()
  (llama / "config.json").write_text(json.dumps({"model_type": "llama",
                                                 "architectures": ["LlamaForCausalLM"]}))
  with pytest.raises(ValueError, match="model_type='llama'.*not supported"):
    export.import_hf(str(llama), str(tmp_path / "b"), tokenizer="byte")

  classifier = tmp_path / "classifier"
  classifier.mkdir()
  (classifier / "config.json").write_text(json.dumps(
      {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}))
  with pytest.raises(ValueError, match="BertForSequenceClassification.*not supported"):
    export.import_hf(str(classifier), str(tmp_path / "c"), tokenizer="byte")

  # A plain GPT-2 folder: no tokenizer at all, then unreadable vocab.json + merges.txt.
  plain = tmp_path / "plain"
  shutil.copytree(hf_dir, plain)
  with pytest.raises(ValueError, match="holds no tokenizer.*--tokenizer=byte"):
    export.import_hf(str(plain), str(tmp_path / "d"))
  (plain / "vocab.json").write_text("{not json")
  (plain / "merges.txt").write_text("")
  with pytest.raises(ValueError, match="cannot read the tokenizer of .*vocab.json, merges.txt"):
    export.import_hf(str(plain), str(tmp_path / "d"))
  assert not (tmp_path / "d").exists()

  small = tmp_path / "small"
  config = transformers.GPT2Config(vocab_size=128, n_positions=16, n_embd=16, n_layer=1, n_head=2)
  transformers.GPT2LMHeadModel(config).save_pretrained(small)
  with pytest.raises(ValueError, match="263 ids.*only 128 rows"):
    export.import_hf(str(small), str(tmp_path / "e"), tokenizer="byte")

  with pytest.raises(ValueError, match="already holds a run"):
    export.import_hf(str(hf_dir), str(gpt2[2]), tokenizer="byte")
