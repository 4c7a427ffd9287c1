"""Hugging Face `transformers` interop: configs and parameters, both ways, as plain numpy.

The layouts pretrax's presets follow are supported:
  gpt   <-> GPT-2 (`GPT2LMHeadModel` / `GPT2Model`): pre-LN, learned positions, tied LM head.
  bert  <-> BERT (`BertForPreTraining`; `BertForMaskedLM` / `BertModel` on import): post-LN,
            token types, embedding LayerNorm, MLM head (tied) + pooler + NSP head.
  encoder_decoder <-> BART (`BartForConditionalGeneration`), T5
            (`T5ForConditionalGeneration`) or Marian (`MarianMTModel`), by the model's switches:
            interop/hf_seq2seq.py, to which every function here hands that family.

Parameter names (pretrax pure dict <-> HF state dict, without the base-model prefix
"transformer." / "bert."; the heads "cls.*" have none):

  GPT-2   token_embed_vd [V, D]         wte.weight [V, D]
          position_embed_pd [P, D]      wpe.weight [P, D]
          blocks.i.attn_norm            h.i.ln_1.{weight, bias}
          blocks.i.attn.w_{q,k,v}_dhk   h.i.attn.c_attn.weight [D, 3*H*K]  (Conv1D: x @ W, q|k|v)
          blocks.i.attn.w_o_hkd         h.i.attn.c_proj.weight [H*K, D]
          blocks.i.mlp_norm             h.i.ln_2
          blocks.i.mlp.w_in_df/w_out_fd h.i.mlp.c_fc.weight [D, F] / c_proj.weight [F, D]
          final_norm                    ln_f
  BERT    nn.Linear weights are [out, in]: the transpose of pretrax's [in, out].
          embeddings.{word,position,token_type}_embeddings, embeddings.LayerNorm (embed_norm),
          encoder.layer.i.attention.self.{query,key,value}, attention.output.dense,
          attention.output.LayerNorm (attn_norm), intermediate.dense, output.dense,
          output.LayerNorm (mlp_norm), pooler.dense (pooler), cls.predictions.transform.dense
          (mlm_dense), cls.predictions.transform.LayerNorm (mlm_norm), cls.predictions.bias
          (mlm_bias_v), cls.seq_relationship (nsp).

Every conversion is a reshape or a transpose: pretrax -> HF -> pretrax is bit-exact.
"""

import dataclasses
from typing import Callable

import numpy as np

from pretrax.data.errors import InputError
from pretrax.modeling.config import ModelConfig

# pretrax activation -> HF name; and the HF names pretrax computes identically.
ACTIVATION_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
ACTIVATION_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                      "relu": "relu"}

# family -> (HF model_type, architecture written on export, architectures accepted on import,
#            base-model prefix of the state dict)
FAMILIES = {
    "gpt": ("gpt2", "GPT2LMHeadModel", ("GPT2LMHeadModel", "GPT2Model"), "transformer."),
    "bert": ("bert", "BertForPreTraining", ("BertForPreTraining", "BertForMaskedLM", "BertModel"),
             "bert."),
}
MODEL_TYPE_TO_FAMILY = {v[0]: k for k, v in FAMILIES.items()}
SEQ2SEQ_MODEL_TYPES = ("bart", "t5", "marian")  # family encoder_decoder: interop/hf_seq2seq.py

# State-dict entries that carry no parameter of their own: buffers of old GPT-2 checkpoints and
# the tied copies of the embedding (checked to equal it on import).
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")
_TIED = {"lm_head.weight": "wte.weight",
         "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}
# BERT heads a BertModel / BertForMaskedLM folder may lack; initialized fresh on import.
BERT_HEADS = ("mlm_dense", "mlm_norm", "mlm_bias_v", "pooler", "nsp")


def _seq2seq():
  """interop/hf_seq2seq.py, imported when first needed (it builds on this module's pieces)."""
  from pretrax.interop import hf_seq2seq
  return hf_seq2seq


# --------------------------------------------------------------------------------------------
# Configs.


def check_exportable(model: ModelConfig) -> None:
  """Raises ValueError naming the field when `model` has no GPT-2 / BERT / BART / T5 / Marian
  equivalent."""
  if model.family == "encoder_decoder":
    return _seq2seq().check_exportable(model)
  target = {"gpt": "GPT-2", "bert": "BERT"}[model.family]

  def refuse(field: str, why: str):
    raise InputError(f"config.model.{field}={getattr(model, field)!r} has no {target} "
                     f"equivalent ({why}); only {target}-layout models can be exported to "
                     "Hugging Face (use --format=params to export the parameters for pretrax)")

  if model.position != "learned":
    refuse("position", f"{target} uses a learned position table")
  if model.embed_scale:
    refuse("embed_scale", f"{target} does not scale its token embeddings")
  if not model.attention_scale:
    refuse("attention_scale", f"{target} scales attention scores by 1/sqrt(head_dim)")
  if model.activation not in ACTIVATION_TO_HF:
    refuse("activation", f"{target}'s MLP is not gated; supported: "
           f"{', '.join(ACTIVATION_TO_HF)}")
  if model.norm != "layernorm":
    refuse("norm", f"{target} uses LayerNorm with a bias")
  if not model.use_bias:
    refuse("use_bias", f"{target} has biases on every dense layer and norm")
  if model.attn_head_dim * model.num_heads != model.d_model:
    refuse("head_dim", f"{target}'s head size is d_model / num_heads = "
           f"{model.d_model}/{model.num_heads}")
  if model.family == "gpt":
    if model.norm_position != "pre":
      refuse("norm_position", "GPT-2 is pre-LN")
    if model.type_vocab_size:
      refuse("type_vocab_size", "GPT-2 has no token-type embeddings")
    if model.embed_norm:
      refuse("embed_norm", "GPT-2 has no norm after the embeddings")
  else:
    if model.norm_position != "post":
      refuse("norm_position", "BERT is post-LN")
    if not model.type_vocab_size:
      refuse("type_vocab_size", "BERT has token-type embeddings (type_vocab_size=2)")
    if not model.embed_norm:
      refuse("embed_norm", "BERT has a LayerNorm after the embeddings")


def to_hf_config(model: ModelConfig, special_ids: dict[str, int]) -> dict:
  """A `transformers` config.json dict for `model` (checked with `check_exportable` first).

  `special_ids`: {"pad_token_id", "bos_token_id", "eos_token_id"} written as is. vocab_size is
  the model's (padded) embedding size, not the tokenizer's.
  """
  if model.family == "encoder_decoder":
    return _seq2seq().to_hf_config(model, special_ids)
  check_exportable(model)
  model_type, architecture, _, _ = FAMILIES[model.family]
  common = {"architectures": [architecture], "model_type": model_type, "dtype": "float32",
            "vocab_size": model.vocab_size, "initializer_range": model.init_std,
            "tie_word_embeddings": True, **special_ids}
  if model.family == "gpt":
    return {**common, "n_positions": model.max_seq_len, "n_embd": model.d_model,
            "n_layer": model.num_layers, "n_head": model.num_heads,
            "n_inner": model.d_ff or None,
            "activation_function": ACTIVATION_TO_HF[model.activation],
            "resid_pdrop": model.dropout, "embd_pdrop": model.dropout,
            "attn_pdrop": model.attention_dropout, "layer_norm_epsilon": model.norm_eps,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False}
  return {**common, "hidden_size": model.d_model, "num_hidden_layers": model.num_layers,
          "num_attention_heads": model.num_heads, "intermediate_size": model.mlp_dim,
          "hidden_act": ACTIVATION_TO_HF[model.activation],
          "hidden_dropout_prob": model.dropout,
          "attention_probs_dropout_prob": model.attention_dropout,
          "max_position_embeddings": model.max_seq_len,
          "type_vocab_size": model.type_vocab_size, "layer_norm_eps": model.norm_eps,
          "position_embedding_type": "absolute", "is_decoder": False,
          "add_cross_attention": False}


def family_of(hf_config: dict, path: str = "config.json") -> tuple[str, str]:
  """(pretrax family, HF architecture) of a config.json dict; ValueError if unsupported."""
  model_type = hf_config.get("model_type")
  if model_type in SEQ2SEQ_MODEL_TYPES:
    return _seq2seq().family_of(hf_config, path)
  archs = hf_config.get("architectures") or []
  supported = ", ".join([a for f in FAMILIES.values() for a in f[2]] +
                        [a for v in _seq2seq().ARCHITECTURES.values() for a in v[1]])
  if model_type not in MODEL_TYPE_TO_FAMILY:
    raise InputError(f"{path}: model_type={model_type!r} (architectures {archs}) is not "
                     f"supported; pretrax imports {supported}")
  family = MODEL_TYPE_TO_FAMILY[model_type]
  accepted = FAMILIES[family][2]
  if not archs:
    return family, accepted[-1]  # GPT2Model / BertModel: whatever heads the weights hold
  if len(archs) != 1 or archs[0] not in accepted:
    raise InputError(f"{path}: architectures={archs} is not supported; pretrax imports "
                     f"{supported} (a task head such as a classifier has no pretrax equivalent)")
  return family, archs[0]


def _hf_get(hf: dict, field: str, default):
  """hf[field], or `default` when it is absent or null."""
  value = hf.get(field, default)
  return default if value is None else value


def from_hf_config(hf: dict, base: ModelConfig, path: str = "config.json",
                   tensors: dict | None = None) -> ModelConfig:
  """The pretrax model section for a GPT-2 / BERT / BART / T5 / Marian config.json dict.

  Fields HF has no notion of (attention_impl, dtype, rope_theta) come from `base`, except that a
  model with attention dropout gets attention_impl=einsum, the one path that has it. `tensors`
  (the state dict, optional) settles what a config.json leaves open: whether a T5 head is tied.
  Raises ValueError naming the HF field for layouts pretrax cannot compute.
  """
  family, _ = family_of(hf, path)
  if family == "encoder_decoder":
    return _seq2seq().from_hf_config(hf, base, path, tensors)

  def need(field: str, ok: bool, why: str):
    if not ok:
      raise InputError(f"{path}: {field}={hf.get(field)!r} is not supported by pretrax ({why})")

  def activation(field: str, default: str) -> str:
    name = _hf_get(hf, field, default)
    need(field, name in ACTIVATION_FROM_HF, f"supported: {', '.join(ACTIVATION_FROM_HF)}")
    return ACTIVATION_FROM_HF[name]

  need("add_cross_attention", not hf.get("add_cross_attention", False), "no cross-attention")
  need("tie_word_embeddings", hf.get("tie_word_embeddings", True) is not False,
       "the LM head is tied to the token embedding")
  if family == "gpt":
    need("scale_attn_weights", hf.get("scale_attn_weights", True) is not False,
         "attention logits are scaled by 1/sqrt(head_dim)")
    need("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx", False),
         "no per-layer attention scaling")
    d = hf.get("n_embd", 768)
    n_inner = hf.get("n_inner")
    values = dict(
        family="gpt", vocab_size=hf.get("vocab_size", 50257),
        max_seq_len=hf.get("n_positions", 1024), num_layers=hf.get("n_layer", 12),
        num_heads=hf.get("n_head", 12), d_model=d, d_ff=0 if n_inner in (None, 4 * d) else n_inner,
        norm_eps=_hf_get(hf, "layer_norm_epsilon", 1e-5),
        activation=activation("activation_function", "gelu_new"),
        dropout=_hf_get(hf, "resid_pdrop", 0.1), attention_dropout=_hf_get(hf, "attn_pdrop", 0.1),
        init_std=_hf_get(hf, "initializer_range", 0.02),
        norm="layernorm", norm_position="pre", position="learned", use_bias=True,
        type_vocab_size=0, embed_norm=False, head_dim=0)
  else:
    need("position_embedding_type", hf.get("position_embedding_type", "absolute") == "absolute",
         "a learned absolute position table")
    need("is_decoder", not hf.get("is_decoder", False), "BERT is a bidirectional encoder")
    d = hf.get("hidden_size", 768)
    inner = hf.get("intermediate_size", 3072)
    values = dict(
        family="bert", vocab_size=hf.get("vocab_size", 30522),
        max_seq_len=hf.get("max_position_embeddings", 512),
        num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
        d_model=d, d_ff=0 if inner == 4 * d else inner,
        norm_eps=_hf_get(hf, "layer_norm_eps", 1e-12),
        activation=activation("hidden_act", "gelu"),
        dropout=_hf_get(hf, "hidden_dropout_prob", 0.1),
        attention_dropout=_hf_get(hf, "attention_probs_dropout_prob", 0.1),
        init_std=_hf_get(hf, "initializer_range", 0.02),
        type_vocab_size=hf.get("type_vocab_size", 2),
        norm="layernorm", norm_position="post", position="learned", use_bias=True,
        embed_norm=True, head_dim=0)
    need("type_vocab_size", values["type_vocab_size"] > 0, "BERT has token-type embeddings")
  heads = values["num_heads"]
  need("n_head" if family == "gpt" else "num_attention_heads", values["d_model"] % heads == 0,
       "the hidden size must be divisible by the number of heads")
  if values["attention_dropout"] > 0:
    # The imported model keeps its attention dropout, which only the einsum path has.
    values["attention_impl"] = "einsum"
  model = dataclasses.replace(base, **values)
  model.validate()
  return model


# --------------------------------------------------------------------------------------------
# Parameters: one table of (HF name, pretrax paths, to_hf, from_hf) per family.

Path = tuple
Layout = list[tuple[str, tuple[Path, ...], Callable, Callable]]


def _copy():
  return (lambda a: a), (lambda x: [x])


def _linear():
  """pretrax [in, out] <-> nn.Linear [out, in]."""
  return (lambda a: a.T), (lambda x: [x.T])


def _layer_norm(prefix: str, path: Path) -> Layout:
  return [(f"{prefix}.weight", (path + ("scale_d",),), *_copy()),
          (f"{prefix}.bias", (path + ("bias_d",),), *_copy())]


def _dense(prefix: str, path: Path) -> Layout:
  """pretrax `Dense` (w_io [I, O], b_o [O]) <-> nn.Linear."""
  return [(f"{prefix}.weight", (path + ("w_io",),), *_linear()),
          (f"{prefix}.bias", (path + ("b_o",),), *_copy())]


def layout(model: ModelConfig) -> Layout:
  """Every parameter of `model` with its HF name (without the base-model prefix)."""
  if model.family == "encoder_decoder":
    return _seq2seq().layout(model)
  d, h, k = model.d_model, model.num_heads, model.attn_head_dim
  hk = h * k

  def merge_in(a):           # [D, H, K] -> [D, H*K]; [H, K] -> [H*K]
    return a.reshape(*a.shape[:-2], hk)

  def split_in(x):           # inverse of merge_in
    return x.reshape(*x.shape[:-1], h, k)

  def merge_out(a):          # [H, K, D] -> [H*K, D]
    return a.reshape(hk, d)

  def split_out(x):
    return x.reshape(h, k, d)

  out: Layout = []
  if model.family == "gpt":
    out += [("wte.weight", (("token_embed_vd",),), *_copy()),
            ("wpe.weight", (("position_embed_pd",),), *_copy())]
    for i in range(model.num_layers):
      p, hf = ("blocks", i), f"h.{i}"
      qkv_w = tuple(p + ("attn", f"w_{n}_dhk") for n in "qkv")
      qkv_b = tuple(p + ("attn", f"b_{n}_hk") for n in "qkv")
      out += _layer_norm(f"{hf}.ln_1", p + ("attn_norm",))
      out += [
          (f"{hf}.attn.c_attn.weight", qkv_w,
           lambda q, k_, v: np.concatenate([merge_in(q), merge_in(k_), merge_in(v)], axis=1),
           lambda x: [split_in(a) for a in np.split(x, 3, axis=1)]),
          (f"{hf}.attn.c_attn.bias", qkv_b,
           lambda q, k_, v: np.concatenate([merge_in(q), merge_in(k_), merge_in(v)]),
           lambda x: [split_in(a) for a in np.split(x, 3)]),
          (f"{hf}.attn.c_proj.weight", (p + ("attn", "w_o_hkd"),), merge_out,
           lambda x: [split_out(x)]),
          (f"{hf}.attn.c_proj.bias", (p + ("attn", "b_o_d"),), *_copy()),
      ]
      out += _layer_norm(f"{hf}.ln_2", p + ("mlp_norm",))
      out += [(f"{hf}.mlp.c_fc.weight", (p + ("mlp", "w_in_df"),), *_copy()),
              (f"{hf}.mlp.c_fc.bias", (p + ("mlp", "b_in_f"),), *_copy()),
              (f"{hf}.mlp.c_proj.weight", (p + ("mlp", "w_out_fd"),), *_copy()),
              (f"{hf}.mlp.c_proj.bias", (p + ("mlp", "b_out_d"),), *_copy())]
    out += _layer_norm("ln_f", ("final_norm",))
    return out

  out += [("embeddings.word_embeddings.weight", (("token_embed_vd",),), *_copy()),
          ("embeddings.position_embeddings.weight", (("position_embed_pd",),), *_copy()),
          ("embeddings.token_type_embeddings.weight", (("type_embed_yd",),), *_copy())]
  out += _layer_norm("embeddings.LayerNorm", ("embed_norm",))
  for i in range(model.num_layers):
    p, hf = ("blocks", i), f"encoder.layer.{i}"
    for name, n in (("query", "q"), ("key", "k"), ("value", "v")):
      out += [(f"{hf}.attention.self.{name}.weight", (p + ("attn", f"w_{n}_dhk"),),
               lambda a: merge_in(a).T, lambda x: [split_in(x.T)]),
              (f"{hf}.attention.self.{name}.bias", (p + ("attn", f"b_{n}_hk"),),
               merge_in, lambda x: [split_in(x)])]
    out += [(f"{hf}.attention.output.dense.weight", (p + ("attn", "w_o_hkd"),),
             lambda a: merge_out(a).T, lambda x: [split_out(x.T)]),
            (f"{hf}.attention.output.dense.bias", (p + ("attn", "b_o_d"),), *_copy())]
    out += _layer_norm(f"{hf}.attention.output.LayerNorm", p + ("attn_norm",))
    out += [(f"{hf}.intermediate.dense.weight", (p + ("mlp", "w_in_df"),), *_linear()),
            (f"{hf}.intermediate.dense.bias", (p + ("mlp", "b_in_f"),), *_copy()),
            (f"{hf}.output.dense.weight", (p + ("mlp", "w_out_fd"),), *_linear()),
            (f"{hf}.output.dense.bias", (p + ("mlp", "b_out_d"),), *_copy())]
    out += _layer_norm(f"{hf}.output.LayerNorm", p + ("mlp_norm",))
  out += _dense("pooler.dense", ("pooler",))
  out += _dense("cls.predictions.transform.dense", ("mlm_dense",))
  out += _layer_norm("cls.predictions.transform.LayerNorm", ("mlm_norm",))
  out += [("cls.predictions.bias", (("mlm_bias_v",),), *_copy())]
  out += _dense("cls.seq_relationship", ("nsp",))
  return out


def _get(tree: dict, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def hf_name(model: ModelConfig, name: str) -> str:
  """The full state-dict key: the base-model prefix unless it is a head ("cls.*")."""
  if model.family == "encoder_decoder":
    return _seq2seq().hf_name(model, name)
  return name if name.startswith("cls.") else FAMILIES[model.family][3] + name


def to_hf_state(model: ModelConfig, params: dict) -> dict[str, np.ndarray]:
  """pretrax pure-dict params -> {HF state-dict key: contiguous float32 array}.

  The tied copies (lm_head.weight, cls.predictions.decoder.*) are left out, as
  `save_pretrained` does; `from_pretrained` ties them back.
  """
  check_exportable(model)
  state = {}
  for name, paths, to_hf, _ in layout(model):
    arrays = [np.asarray(_get(params, p), np.float32) for p in paths]
    state[hf_name(model, name)] = np.ascontiguousarray(to_hf(*arrays))
  if model.family == "encoder_decoder":
    state.update(_seq2seq().tied_copies(model, state))
  return state


def _normalize_key(key: str, prefix: str) -> str:
  """Strips the base-model prefix; old TF-converted names (LayerNorm.gamma/beta) -> weight/bias."""
  if key.startswith(prefix):
    key = key[len(prefix):]
  if key.endswith(".gamma"):
    key = key[:-len(".gamma")] + ".weight"
  elif key.endswith(".beta"):
    key = key[:-len(".beta")] + ".bias"
  return key


def _shape_error(source: str, key: str, shape, paths, wants, got=None) -> InputError:
  """The error for HF tensor `key` of `shape` that does not give the params at `paths`."""
  targets = ", ".join(f"{'.'.join(map(str, p))} {w}" for p, w in zip(paths, wants))
  converted = ("" if got in (None, [tuple(shape)])
               else f" (it converts to {', '.join(map(str, got))})")
  return InputError(f"{source}: tensor {key} has shape {tuple(shape)}, which does not fit the "
                    f"model's {targets}{converted}: config.json disagrees with the weights (check "
                    "its sizes: vocabulary, positions, width, MLP width, heads)")


def from_hf_state(model: ModelConfig, tensors: dict[str, np.ndarray], abstract_params: dict,
                  fresh_params: Callable[[], dict] | None = None,
                  source: str = "the checkpoint") -> tuple[dict, list[str]]:
  """{HF state-dict key: array} -> (pretrax pure-dict params, names initialized fresh).

  `abstract_params` (shapes of the model built from `model`) checks every shape. BERT heads
  missing from `tensors` (a BertModel / BertForMaskedLM checkpoint) and a missing BART
  final_logits_bias are taken from `fresh_params()`, a freshly initialized model; any other
  missing tensor, unknown tensor or wrong shape is a ValueError naming it.
  """
  seq2seq = _seq2seq() if model.family == "encoder_decoder" else None
  prefix = seq2seq.prefix(model) if seq2seq else FAMILIES[model.family][3]
  tied = seq2seq.tied(model) if seq2seq else _TIED
  by_name, keys = {}, {}
  for key, value in tensors.items():
    name = _normalize_key(key, prefix)
    if name in by_name:
      raise InputError(f"{source}: two tensors map to {name!r} (one of them is {key!r})")
    by_name[name], keys[name] = np.asarray(value, np.float32), key
  used, params, fresh, missing = set(), {}, [], []
  for name, paths, _, from_hf in layout(model):
    if name not in by_name:
      if (model.family == "bert" and paths[0][0] in BERT_HEADS
          or seq2seq and seq2seq.optional(name)):
        fresh.append(name)
        continue
      missing.append(name)
      continue
    used.add(name)
    tensor, wants = by_name[name], [tuple(_get(abstract_params, p).shape) for p in paths]
    try:
      values = from_hf(tensor)
    except ValueError:  # a split or reshape the tensor's shape does not allow
      raise _shape_error(source, keys[name], tensor.shape, paths, wants) from None
    got = [tuple(v.shape) for v in values]
    if got != wants:
      raise _shape_error(source, keys[name], tensor.shape, paths, wants, got)
    for path, value in zip(paths, values):
      _set(params, path, np.ascontiguousarray(value))
  if missing:
    raise InputError(f"{source} lacks {len(missing)} tensor(s) the model needs, e.g. "
                     f"{', '.join(missing[:4])}")
  for name, target in tied.items():
    if name in by_name:
      used.add(name)
      if target in by_name and not np.array_equal(by_name[name], by_name[target]):
        raise InputError(f"{source}: {name} differs from {target}; pretrax ties the output "
                         "projection to the token embedding and cannot import an untied head")
  used |= {n for n in by_name if n.endswith(_GPT2_BUFFERS) or n.endswith("position_ids")
           or (seq2seq and n not in used and seq2seq.ignored(model, n, by_name[n], source))}
  unknown = sorted(set(by_name) - used)
  if unknown:
    raise InputError(f"{source} holds {len(unknown)} tensor(s) pretrax has no place for, e.g. "
                     f"{', '.join(unknown[:4])} (a task head or a different architecture?)")
  if fresh:
    new = fresh_params()
    for name, paths, _, _ in layout(model):
      if name in fresh:
        for path in paths:
          _set(params, path, np.asarray(_get(new, path), np.float32))
  return params, fresh
