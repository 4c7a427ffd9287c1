"""Hugging Face interop of config.model.family="encoder_decoder": BART, T5, Marian, both ways.

Which architecture a model maps to follows from its switches (`variant`):
  bart  <-> BartForConditionalGeneration: learned positions, post-LN LayerNorm with biases, an
            embedding LayerNorm per stack, erf GELU (or gelu_new / relu), final_logits_bias, LM
            head tied to the shared embedding (configs/bart.py).
  t5    <-> T5ForConditionalGeneration: relative position bias (one table per stack, in block
            0), pre-LN RMSNorm without biases, unscaled attention, any d_kv. v1.1: gated-gelu
            (geglu) and an untied lm_head (configs/t5.py); v1.0: relu and the tied head scaled
            by d_model**-0.5 (tied_logit_scale).
  marian <-> MarianMTModel: sinusoidal positions (the original Transformer, configs/transformer.py):
            BART's post-LN layers without its embedding LayerNorm; final_logits_bias is a buffer
            (zeros unless the pretrax model has one), the sinusoid tables are not saved.
A model none can compute (rotary positions, a pre-LN or RMS-norm Marian, ...) is refused by
`check_exportable`, naming the config field; `pretrax export --format=params` still works.

Parameter names (pretrax pure dict <-> HF state dict; BART's base-model prefix "model." is left
out, its heads lm_head / final_logits_bias have none; T5's names have no prefix). S is a stack,
encoder or decoder; nn.Linear weights are [out, in], the transpose of pretrax's [in, out].

  BART  token_embed_vd                 shared.weight (= S.embed_tokens.weight = lm_head.weight)
        S.position_embed_pd [P, D]     S.embed_positions.weight [P + 2, D]: 2 unused rows first
        S.embed_norm                   S.layernorm_embedding
        S.blocks.i.attn.w_{q,k,v}_dhk  S.layers.i.self_attn.{q,k,v}_proj [H*K, D] (+ bias)
        S.blocks.i.attn.w_o_hkd        S.layers.i.self_attn.out_proj [D, H*K] (+ bias)
        S.blocks.i.attn_norm           S.layers.i.self_attn_layer_norm
        S.blocks.i.cross_attn.*        decoder.layers.i.encoder_attn.* (decoder only)
        S.blocks.i.cross_norm          decoder.layers.i.encoder_attn_layer_norm
        S.blocks.i.mlp.w_in_df/w_out_fd S.layers.i.fc1 / fc2 (+ bias)
        S.blocks.i.mlp_norm            S.layers.i.final_layer_norm
        final_logits_bias_v [V]        final_logits_bias [1, V]
  Marian as BART, without S.embed_positions (computed, not saved; ignored on import) and
        S.layernorm_embedding; final_logits_bias [1, V] zeros when the model has no bias.
  T5    token_embed_vd                 shared.weight (= S.embed_tokens.weight)
        S.relative_bias.table_rh       S.block.0.layer.0.SelfAttention.relative_attention_bias
        S.blocks.i.attn.*, attn_norm   S.block.i.layer.0.SelfAttention.{q,k,v,o}, .layer_norm
        decoder cross_attn, cross_norm decoder.block.i.layer.1.EncDecAttention.*, .layer_norm
        S.blocks.i.mlp.w_gate_df       S.block.i.layer.-1.DenseReluDense.wi_0 (gated; the gelu)
        S.blocks.i.mlp.w_in_df         ... .wi_1 (gated) or .wi (relu)
        S.blocks.i.mlp.w_out_fd        ... .wo; mlp_norm: S.block.i.layer.-1.layer_norm
        S.final_norm                   S.final_layer_norm
        lm_head_dv [D, V]              lm_head.weight [V, D] (untied, v1.1)

Every conversion is a reshape, a transpose or BART's 2 extra position rows (zeros on export,
dropped on import): pretrax -> HF -> pretrax is bit-exact.
"""

import dataclasses

import numpy as np

from pretrax.data.errors import InputError
from pretrax.interop import hf as hf_lib
from pretrax.modeling.config import ModelConfig

# HF model_type -> (architecture written on export, architectures accepted on import, base-model
# prefix of the state dict, the pretrax preset an import starts from).
ARCHITECTURES = {
    "bart": ("BartForConditionalGeneration", ("BartForConditionalGeneration",), "model.", "bart"),
    "t5": ("T5ForConditionalGeneration", ("T5ForConditionalGeneration",), "", "t5"),
    "marian": ("MarianMTModel", ("MarianMTModel",), "model.", "transformer"),
}
_BART_HEADS = ("lm_head.weight", "final_logits_bias")  # BART names without the "model." prefix
BART_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding reads row position + 2
BART_NORM_EPS = 1e-5      # BART's (and Marian's) nn.LayerNorm keeps torch's default eps

# pretrax activation -> T5 feed_forward_proj ("gated-ACT" or "ACT"); T5 maps "gated-gelu" to
# gelu_new (tanh), the gate geglu computes.
T5_FEED_FORWARD = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "geglu": "gated-gelu",
                   "swiglu": "gated-silu"}
_T5_GATED_FROM_HF = {"gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu",
                     "silu": "swiglu", "swish": "swiglu"}
# Old fairseq-era BART config fields: pretrax computes only their defaults.
_BART_DEFAULTS = {"normalize_before": False, "add_final_layer_norm": False,
                  "static_position_embeddings": False, "normalize_embedding": True,
                  "add_bias_logits": False}


def variant(model: ModelConfig) -> str | None:
  """"bart", "t5" or "marian", by config.model.position; None for positions none has."""
  return {"learned": "bart", "relative": "t5", "sinusoidal": "marian"}.get(model.position)


# --------------------------------------------------------------------------------------------
# Configs.


def check_exportable(model: ModelConfig) -> None:
  """Raises InputError naming the field when `model` is not BART, T5 or Marian in layout."""
  kind = variant(model)
  target = {"bart": "BART", "t5": "T5", "marian": "Marian", None: "BART, T5 or Marian"}[kind]

  def refuse(field: str, why: str):
    raise InputError(f"config.model.{field}={getattr(model, field)!r} has no {target} "
                     f"equivalent ({why}); only BART- or T5-layout encoder-decoders can be "
                     "exported to Hugging Face (use --format=params to export the parameters "
                     "for pretrax)")

  if kind is None:
    refuse("position", "BART has learned position tables, T5 a relative position bias, Marian "
           "sinusoids")
  if kind in ("bart", "marian"):  # the same post-LN layers
    if model.norm != "layernorm":
      refuse("norm", f"{target} uses LayerNorm with a bias")
    if not model.use_bias:
      refuse("use_bias", f"{target} has biases on every dense layer and norm")
    if model.norm_position != "post":
      refuse("norm_position", f"{target} is post-LN")
    if kind == "bart" and not model.embed_norm:
      refuse("embed_norm", "BART has a LayerNorm after the embeddings (layernorm_embedding)")
    if kind == "marian" and model.embed_norm:
      refuse("embed_norm", "Marian has no norm after the embeddings")
    if model.norm_eps != BART_NORM_EPS:
      refuse("norm_eps", f"{target}'s LayerNorm eps is {BART_NORM_EPS}")
    if model.activation not in hf_lib.ACTIVATION_TO_HF:
      refuse("activation", f"{target}'s MLP is not gated; supported: "
             f"{', '.join(hf_lib.ACTIVATION_TO_HF)}")
    if not model.attention_scale:
      refuse("attention_scale", f"{target} scales attention scores by 1/sqrt(head_dim)")
    if model.attn_head_dim * model.num_heads != model.d_model:
      refuse("head_dim", f"{target}'s head size is d_model / num_heads = "
             f"{model.d_model}/{model.num_heads}")
    if not model.tie_embeddings:
      refuse("tie_embeddings", f"{target} ties its LM head to the shared token embedding")
    if model.tied_logit_scale:
      refuse("tied_logit_scale", f"{target} does not scale the decoder output before its head")
    if kind == "bart" and not model.final_logits_bias:
      refuse("final_logits_bias", "BART adds a [V] bias to the logits; set it True (zeros)")
    return
  if model.norm != "rmsnorm":
    refuse("norm", "T5 uses an RMS norm without mean subtraction")
  if model.use_bias:
    refuse("use_bias", "T5 has no biases")
  if model.norm_position != "pre":
    refuse("norm_position", "T5 is pre-LN")
  if model.embed_norm:
    refuse("embed_norm", "T5 has no norm after the embeddings")
  if model.embed_scale:
    refuse("embed_scale", "T5 does not scale its embeddings")
  if model.attention_scale:
    refuse("attention_scale", "T5 does not divide attention scores by sqrt(head_dim)")
  if model.final_logits_bias:
    refuse("final_logits_bias", "T5 has no logits bias")
  if model.activation not in T5_FEED_FORWARD:
    refuse("activation", f"supported: {', '.join(T5_FEED_FORWARD)}")


def to_hf_config(model: ModelConfig, special_ids: dict[str, int]) -> dict:
  """A config.json dict for `model` (checked first); the decoder starts from bos_token_id."""
  check_exportable(model)
  kind = variant(model)
  architecture = ARCHITECTURES[kind][0]
  common = {"architectures": [architecture], "model_type": kind, "dtype": "float32",
            "vocab_size": model.vocab_size, "d_model": model.d_model, "is_encoder_decoder": True,
            "decoder_start_token_id": special_ids["bos_token_id"], **special_ids}
  if kind in ("bart", "marian"):
    h, f = model.num_heads, model.mlp_dim
    marian = {"decoder_vocab_size": model.vocab_size,
              "share_encoder_decoder_embeddings": True} if kind == "marian" else {}
    return {**common, **marian, "max_position_embeddings": model.max_seq_len,
            "encoder_layers": model.num_layers, "decoder_layers": model.num_decoder_layers,
            "encoder_attention_heads": h, "decoder_attention_heads": h,
            "encoder_ffn_dim": f, "decoder_ffn_dim": f,
            "activation_function": hf_lib.ACTIVATION_TO_HF[model.activation],
            "dropout": model.dropout, "attention_dropout": model.attention_dropout,
            "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
            "init_std": model.init_std, "scale_embedding": model.embed_scale,
            "forced_eos_token_id": special_ids["eos_token_id"], "tie_word_embeddings": True}
  # T5's tied-head scaling, across transformers versions:
  #   4.x: scales by d_model**-0.5 iff tie_word_embeddings (True: v1.0, tied; False: v1.1,
  #        lm_head.weight of its own);
  #   5.x (checked on 5.24): T5Config pops tie_word_embeddings into `scale_decoder_outputs`, an
  #        explicit scale_decoder_outputs in config.json wins, and tie_word_embeddings is forced
  #        True; from_pretrained unties lm_head when the file's lm_head.weight differs from
  #        shared.weight.
  # Writing both fields reads the same in both. A tied head without the scale is written as
  # tie_word_embeddings=False with lm_head.weight a copy of the embedding (`tied_copies`): 4.x
  # computes the same, 5.x ties the equal tensors.
  scaled = model.tie_embeddings and model.tied_logit_scale
  return {**common, "d_kv": model.attn_head_dim, "d_ff": model.mlp_dim,
          "num_layers": model.num_layers, "num_decoder_layers": model.num_decoder_layers,
          "num_heads": model.num_heads,
          "relative_attention_num_buckets": model.relative_buckets,
          "relative_attention_max_distance": model.relative_max_distance,
          "feed_forward_proj": T5_FEED_FORWARD[model.activation],
          "dropout_rate": model.dropout,  # T5's one rate, attention probabilities included
          "layer_norm_epsilon": model.norm_eps, "initializer_factor": 1.0,
          "n_positions": model.max_seq_len,
          "tie_word_embeddings": scaled, "scale_decoder_outputs": scaled}


def family_of(hf: dict, path: str = "config.json") -> tuple[str, str]:
  """("encoder_decoder", architecture) of a BART / T5 / Marian config.json dict; InputError
  otherwise."""
  model_type = hf.get("model_type")
  archs = hf.get("architectures") or []
  written, accepted, _, _ = ARCHITECTURES[model_type]
  if not archs:
    return "encoder_decoder", written
  if len(archs) != 1 or archs[0] not in accepted:
    supported = ", ".join(a for v in ARCHITECTURES.values() for a in v[1])
    raise InputError(f"{path}: architectures={archs} is not supported; pretrax imports "
                     f"{supported} (a task head such as a classifier has no pretrax equivalent)")
  return "encoder_decoder", archs[0]


def _t5_untied_head(tensors: dict | None) -> bool | None:
  """Whether the weights hold an lm_head.weight of its own (None: not known without them)."""
  if tensors is None:
    return None
  head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
  return head is not None and not (shared is not None and np.array_equal(head, shared))


def from_hf_config(hf: dict, base: ModelConfig, path: str = "config.json",
                   tensors: dict | None = None) -> ModelConfig:
  """The pretrax model section for a BART / T5 / Marian config.json dict.

  `tensors` (the state dict) tells a T5 with a head of its own from a tied one, which a
  config.json of transformers 5 does not (it always says tie_word_embeddings=true); without
  them, T5 follows transformers 4: untied iff tie_word_embeddings is false. They also tell
  whether Marian's final_logits_bias buffer holds anything but zeros (without them: zeros, no
  bias). Raises InputError naming the HF field for layouts pretrax cannot compute.
  """
  model_type = hf.get("model_type")
  family_of(hf, path)

  def need(field: str, ok: bool, why: str):
    if not ok:
      raise InputError(f"{path}: {field}={hf.get(field)!r} is not supported by pretrax ({why})")

  get = lambda field, default: hf_lib._hf_get(hf, field, default)
  d = get("d_model", 512 if model_type == "t5" else 1024)
  values = dict(family="encoder_decoder", d_model=d, type_vocab_size=0)
  marian = model_type == "marian"
  vocab = get("vocab_size", 58101 if marian else 50265)
  if model_type == "bart":
    for field, default in _BART_DEFAULTS.items():
      need(field, hf.get(field, default) == default, f"BART computes {field}={default}")
    need("extra_pos_embeddings", hf.get("extra_pos_embeddings", BART_POSITION_OFFSET) ==
         BART_POSITION_OFFSET, f"the position table has {BART_POSITION_OFFSET} extra rows")
  if marian:
    need("share_encoder_decoder_embeddings", hf.get("share_encoder_decoder_embeddings", True),
         "pretrax shares one token embedding between encoder and decoder")
    need("decoder_vocab_size", get("decoder_vocab_size", vocab) == vocab,
         f"the decoder's vocabulary is the encoder's (vocab_size={vocab})")
  if model_type in ("bart", "marian"):
    need("tie_word_embeddings", hf.get("tie_word_embeddings", True) is not False,
         "the LM head is the shared token embedding")
    heads, ffn = get("encoder_attention_heads", 16), get("encoder_ffn_dim", 4096)
    need("decoder_attention_heads", get("decoder_attention_heads", 16) == heads,
         f"the decoder has as many heads as the encoder (encoder_attention_heads={heads})")
    need("decoder_ffn_dim", get("decoder_ffn_dim", 4096) == ffn,
         f"the decoder's MLP is as wide as the encoder's (encoder_ffn_dim={ffn})")
    need("encoder_attention_heads", d % heads == 0,
         "the hidden size must be divisible by the number of heads")
    act = get("activation_function", "gelu")
    need("activation_function", act in hf_lib.ACTIVATION_FROM_HF,
         f"supported: {', '.join(hf_lib.ACTIVATION_FROM_HF)}")
    layers, decoder_layers = get("encoder_layers", 12), get("decoder_layers", 12)
    bias = None if tensors is None else tensors.get("final_logits_bias")
    values.update(
        vocab_size=vocab, max_seq_len=get("max_position_embeddings", 1024),
        num_layers=layers, decoder_layers=0 if decoder_layers == layers else decoder_layers,
        num_heads=heads, d_ff=0 if ffn == 4 * d else ffn, head_dim=0,
        activation=hf_lib.ACTIVATION_FROM_HF[act], norm="layernorm", norm_position="post",
        norm_eps=BART_NORM_EPS, position="sinusoidal" if marian else "learned",
        embed_norm=not marian, embed_scale=bool(get("scale_embedding", False)),
        attention_scale=True, use_bias=True, tie_embeddings=True, tied_logit_scale=False,
        final_logits_bias=not marian or bias is not None and bool(np.any(bias)),
        dropout=get("dropout", 0.1), attention_dropout=get("attention_dropout", 0.0),
        init_std=get("init_std", 0.02))
  else:
    proj = get("feed_forward_proj", "relu")
    gated, _, act = proj.rpartition("-")
    if gated == "gated":
      need("feed_forward_proj", act in _T5_GATED_FROM_HF,
           "gated MLPs: gated-gelu (geglu), gated-silu (swiglu)")
      activation = _T5_GATED_FROM_HF[act]
    else:
      need("feed_forward_proj", not gated and act in hf_lib.ACTIVATION_FROM_HF,
           f"supported: gated-gelu, gated-silu, {', '.join(hf_lib.ACTIVATION_FROM_HF)}")
      activation = hf_lib.ACTIVATION_FROM_HF[act]
    tie = hf.get("tie_word_embeddings", True) is not False
    scaled = bool(hf["scale_decoder_outputs"]) if "scale_decoder_outputs" in hf else tie
    untied = _t5_untied_head(tensors)
    untied = (not tie) if untied is None else untied
    field = "scale_decoder_outputs" if "scale_decoder_outputs" in hf else "tie_word_embeddings"
    need(field, not (untied and scaled), "lm_head.weight differs from shared.weight, and pretrax "
         "scales the decoder output by d_model**-0.5 only before a tied head")
    layers = get("num_layers", 6)
    decoder_layers = get("num_decoder_layers", layers)
    dropout = get("dropout_rate", 0.1)
    values.update(
        vocab_size=get("vocab_size", 32128), max_seq_len=get("n_positions", base.max_seq_len),
        num_layers=layers, decoder_layers=0 if decoder_layers == layers else decoder_layers,
        num_heads=get("num_heads", 8), d_ff=get("d_ff", 2048), head_dim=get("d_kv", 64),
        activation=activation, norm="rmsnorm", norm_position="pre",
        norm_eps=get("layer_norm_epsilon", 1e-6), position="relative",
        relative_buckets=get("relative_attention_num_buckets", 32),
        relative_max_distance=get("relative_attention_max_distance", 128),
        embed_norm=False, embed_scale=False, attention_scale=False, use_bias=False,
        tie_embeddings=not untied, tied_logit_scale=scaled, final_logits_bias=False,
        dropout=dropout, attention_dropout=dropout, init_std=base.init_std)
    if base.attention_impl == "blockwise":  # it takes no relative bias
      values["attention_impl"] = "einsum"
  if values["attention_dropout"] > 0:
    values["attention_impl"] = "einsum"  # the one path with attention dropout
  model = dataclasses.replace(base, **values)
  model.validate()
  return model


def notes(hf: dict) -> list[str]:
  """What an import drops: BART's / Marian's training-only knobs pretrax has no equivalent
  for."""
  out = []
  for field in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
    if hf.get("model_type") in ("bart", "marian") and (hf.get(field) or 0) > 0:
      out.append(f"{field}={hf[field]} is dropped: pretrax has no equivalent (training only)")
  return out


# --------------------------------------------------------------------------------------------
# Parameters.


def layout(model: ModelConfig) -> hf_lib.Layout:
  """Every parameter of `model` with its HF name (without BART's "model." prefix)."""
  d, h, k = model.d_model, model.num_heads, model.attn_head_dim
  hk = h * k
  kind = variant(model)

  def linear_in():  # [D, H, K] -> nn.Linear [H*K, D]
    return (lambda a: a.reshape(d, hk).T), (lambda x: [x.T.reshape(d, h, k)])

  def linear_out():  # [H, K, D] -> nn.Linear [D, H*K]
    return (lambda a: a.reshape(hk, d).T), (lambda x: [x.T.reshape(h, k, d)])

  def bias_in():  # [H, K] -> [H*K]
    return (lambda a: a.reshape(hk)), (lambda x: [x.reshape(h, k)])

  def attention(hf: str, p: tuple) -> hf_lib.Layout:
    if kind == "t5":
      out = [(f"{hf}.{n}.weight", (p + (f"w_{n}_dhk",),), *linear_in()) for n in "qkv"]
      return out + [(f"{hf}.o.weight", (p + ("w_o_hkd",),), *linear_out())]
    out = []
    for n in "qkv":
      out += [(f"{hf}.{n}_proj.weight", (p + (f"w_{n}_dhk",),), *linear_in()),
              (f"{hf}.{n}_proj.bias", (p + (f"b_{n}_hk",),), *bias_in())]
    return out + [(f"{hf}.out_proj.weight", (p + ("w_o_hkd",),), *linear_out()),
                  (f"{hf}.out_proj.bias", (p + ("b_o_d",),), *hf_lib._copy())]

  def norm(hf: str, p: tuple) -> hf_lib.Layout:
    if kind == "t5":
      return [(f"{hf}.weight", (p + ("scale_d",),), *hf_lib._copy())]
    return hf_lib._layer_norm(hf, p)

  def linear(hf: str, p: tuple, w: str, b: str | None) -> hf_lib.Layout:
    out = [(f"{hf}.weight", (p + (w,),), *hf_lib._linear())]
    return out + ([(f"{hf}.bias", (p + (b,),), *hf_lib._copy())] if b else [])

  out: hf_lib.Layout = [("shared.weight", (("token_embed_vd",),), *hf_lib._copy())]
  for stack in ("encoder", "decoder"):
    decoder = stack == "decoder"
    layers = model.num_decoder_layers if decoder else model.num_layers
    if kind == "bart":
      pad = BART_POSITION_OFFSET
      out += [(f"{stack}.embed_positions.weight", ((stack, "position_embed_pd"),),
               lambda a: np.concatenate([np.zeros((pad, d), a.dtype), a]),
               lambda x: [x[pad:]])]
      out += norm(f"{stack}.layernorm_embedding", (stack, "embed_norm"))
    if kind in ("bart", "marian"):
      for i in range(layers):
        p, hf = (stack, "blocks", i), f"{stack}.layers.{i}"
        out += attention(f"{hf}.self_attn", p + ("attn",))
        out += norm(f"{hf}.self_attn_layer_norm", p + ("attn_norm",))
        if decoder:
          out += attention(f"{hf}.encoder_attn", p + ("cross_attn",))
          out += norm(f"{hf}.encoder_attn_layer_norm", p + ("cross_norm",))
        out += linear(f"{hf}.fc1", p + ("mlp",), "w_in_df", "b_in_f")
        out += linear(f"{hf}.fc2", p + ("mlp",), "w_out_fd", "b_out_d")
        out += norm(f"{hf}.final_layer_norm", p + ("mlp_norm",))
      continue
    out += [(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
             ((stack, "relative_bias", "table_rh"),), *hf_lib._copy())]
    for i in range(layers):
      p, hf = (stack, "blocks", i), f"{stack}.block.{i}.layer"
      out += attention(f"{hf}.0.SelfAttention", p + ("attn",))
      out += norm(f"{hf}.0.layer_norm", p + ("attn_norm",))
      ff = 2 if decoder else 1
      if decoder:
        out += attention(f"{hf}.1.EncDecAttention", p + ("cross_attn",))
        out += norm(f"{hf}.1.layer_norm", p + ("cross_norm",))
      mlp = f"{hf}.{ff}.DenseReluDense"
      if model.activation in ("geglu", "swiglu"):
        out += linear(f"{mlp}.wi_0", p + ("mlp",), "w_gate_df", None)  # under the activation
        out += linear(f"{mlp}.wi_1", p + ("mlp",), "w_in_df", None)
      else:
        out += linear(f"{mlp}.wi", p + ("mlp",), "w_in_df", None)
      out += linear(f"{mlp}.wo", p + ("mlp",), "w_out_fd", None)
      out += norm(f"{hf}.{ff}.layer_norm", p + ("mlp_norm",))
    out += norm(f"{stack}.final_layer_norm", (stack, "final_norm"))
  if model.final_logits_bias:  # BART's always; Marian's when it has one (else zeros: tied_copies)
    v = model.vocab_size
    out += [("final_logits_bias", (("final_logits_bias_v",),), lambda a: a.reshape(1, v),
             lambda x: [x.reshape(x.shape[-1])])]
  if not model.tie_embeddings:
    out += [("lm_head.weight", (("lm_head_dv",),), *hf_lib._linear())]
  return out


def prefix(model: ModelConfig) -> str:
  return ARCHITECTURES[variant(model)][2]


def hf_name(model: ModelConfig, name: str) -> str:
  """The full state-dict key: BART's "model." prefix unless it is a head."""
  return name if name in _BART_HEADS else prefix(model) + name


def tied(model: ModelConfig) -> dict[str, str]:
  """Tied copies a state dict may hold (name -> the name it equals, both without prefix)."""
  out = {"encoder.embed_tokens.weight": "shared.weight",
         "decoder.embed_tokens.weight": "shared.weight"}
  if model.tie_embeddings:
    out["lm_head.weight"] = "shared.weight"
  return out


def tied_copies(model: ModelConfig, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Tensors `to_hf_state` adds beyond the layout: a T5 tied head without the d_model**-0.5
  scale goes out as lm_head.weight, a copy (see `to_hf_config`); a Marian without a logits bias
  writes its final_logits_bias buffer as zeros."""
  if variant(model) == "t5" and model.tie_embeddings and not model.tied_logit_scale:
    return {"lm_head.weight": state["shared.weight"].copy()}
  if variant(model) == "marian" and not model.final_logits_bias:
    return {"final_logits_bias": np.zeros((1, model.vocab_size), np.float32)}
  return {}


# State-dict entries with no parameter, which transformers ignores too: fairseq's version markers
# in old BART files; an unused cross-attention bias table in old T5 files; the sinusoid tables
# some Marian files hold (transformers recomputes them on load).
_IGNORED = ("encoder.version", "decoder.version",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
_MARIAN_IGNORED = ("encoder.embed_positions.weight", "decoder.embed_positions.weight")


def ignored(model: ModelConfig, name: str, tensor: np.ndarray, source: str) -> bool:
  """Whether state-dict entry `name` (no prefix) carries nothing pretrax needs; InputError for a
  nonzero Marian final_logits_bias the model has no place for."""
  if variant(model) == "marian":
    if name == "final_logits_bias" and not model.final_logits_bias:
      if np.any(tensor):
        raise InputError(f"{source}: final_logits_bias is nonzero but config.model."
                         "final_logits_bias=False; set it True to import the bias")
      return True
    if name in _MARIAN_IGNORED:
      return True
  return name in _IGNORED


def optional(name: str) -> bool:
  """Tensors a file may lack, initialized fresh (zeros) as transformers does: BART's (and
  Marian's) final_logits_bias, missing from some hub checkpoints."""
  return name == "final_logits_bias"
