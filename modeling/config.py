"""Model configuration: one typed schema for every architecture switch."""

import dataclasses

NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "swiglu", "geglu")
POSITIONS = ("learned", "rope", "sinusoidal", "relative")
FAMILIES = ("gpt", "bert", "encoder_decoder")
ATTENTION_IMPLS = ("einsum", "dot_product", "blockwise")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class ModelConfig:
  """Shapes and architecture switches of a transformer stack.

  Each switch lives here and nowhere else: an ablation is one override, e.g.
  `--config.model.norm=rmsnorm`.
  """
  family: str = "gpt"          # gpt: causal decoder, tied LM head | bert: bidirectional encoder, MLM + NSP heads | encoder_decoder: Transformer, BART, T5
  vocab_size: int = 0          # 0: the tokenizer's vocabulary rounded up to a multiple of 128
  max_seq_len: int = 1024      # rows of the learned position table (and the longest input)
  num_layers: int = 12         # blocks (encoder_decoder: the encoder's)
  decoder_layers: int = 0      # encoder_decoder: the decoder's blocks; 0: num_layers
  num_heads: int = 12
  d_model: int = 768
  d_ff: int = 0                # MLP hidden width; 0: 4 * d_model
  head_dim: int = 0            # 0: d_model // num_heads
  norm: str = "layernorm"      # layernorm | rmsnorm
  norm_position: str = "pre"   # pre (GPT-2: norm inside the residual branch) | post (original Transformer)
  norm_eps: float = 1e-5
  activation: str = "gelu_tanh"  # gelu_tanh (GPT-2) | gelu (erf) | relu | swiglu | geglu (gated MLPs)
  position: str = "learned"    # learned (GPT-2 table) | rope (rotary) | sinusoidal (Transformer) | relative (T5's bucketed bias, one table per stack)
  rope_theta: float = 10_000.0
  relative_buckets: int = 32   # relative: buckets of the bias table (half per direction in the encoder)
  relative_max_distance: int = 128  # relative: distances from here on share the last bucket
  embed_scale: bool = False    # token embeddings times sqrt(d_model) (Transformer)
  attention_scale: bool = True  # scores divided by sqrt(head_dim); False: T5 (folded into its init)
  tie_embeddings: bool = True  # encoder_decoder: the LM head is the token embedding; False: a head of its own (T5 v1.1)
  tied_logit_scale: bool = False  # tied head: hidden states times d_model**-0.5 before it (T5 v1.0)
  final_logits_bias: bool = False  # a [V] bias added to the logits (BART)
  use_bias: bool = True        # biases on dense layers and norms (GPT-2 has them)
  type_vocab_size: int = 0     # token-type (sentence A/B) embeddings; 0: none (GPT), 2: BERT
  embed_norm: bool = False     # a norm right after the summed embeddings (BERT)
  attention_impl: str = "einsum"  # einsum (reference path) | dot_product (jax.nn.dot_product_attention) | blockwise (query blocks, causal skipping, custom VJP)
  attention_block: int = 64    # blockwise: queries per block
  remat: str = "none"          # activation rematerialization per block: none | full | dots (keep matmul outputs)
  scan_layers: bool = False    # run the blocks with lax.scan (one compiled block: faster compiles for deep models)
  dropout: float = 0.0         # on embeddings and residual branches, training only
  attention_dropout: float = 0.0
  init_std: float = 0.02       # normal init; residual output projections use init_std / sqrt(2 * num_layers)
  dtype: str = "float32"       # compute dtype (float32 | bfloat16); parameters always stay float32

  @property
  def causal(self) -> bool:
    return self.family == "gpt"

  @property
  def num_decoder_layers(self) -> int:
    return self.decoder_layers or self.num_layers

  @property
  def mlp_dim(self) -> int:
    return self.d_ff or 4 * self.d_model

  @property
  def attn_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def validate(self) -> None:
    """Raises ValueError naming the field when the shapes or switches are inconsistent."""
    choices = {"family": FAMILIES, "attention_impl": ATTENTION_IMPLS, "remat": REMAT_POLICIES,
               "norm": NORMS, "norm_position": NORM_POSITIONS,
               "activation": ACTIVATIONS, "position": POSITIONS, "dtype": DTYPES}
    for name, allowed in choices.items():
      value = getattr(self, name)
      if value not in allowed:
        raise ValueError(f"config.model.{name}={value!r} is not one of {', '.join(allowed)}")
    for name in ("num_layers", "num_heads", "d_model", "max_seq_len", "relative_buckets",
                 "relative_max_distance"):
      if getattr(self, name) <= 0:
        raise ValueError(f"config.model.{name} must be positive, got {getattr(self, name)}")
    for name in ("vocab_size", "d_ff", "head_dim", "type_vocab_size", "decoder_layers"):
      if getattr(self, name) < 0:
        raise ValueError(f"config.model.{name} must be >= 0, got {getattr(self, name)}")
    if not self.head_dim and self.d_model % self.num_heads:
      raise ValueError(
          f"config.model.d_model={self.d_model} is not divisible by config.model.num_heads="
          f"{self.num_heads}; change one of them or set config.model.head_dim explicitly")
    if self.position == "rope" and self.attn_head_dim % 2:
      raise ValueError(f"rotary positions need an even head dimension, got {self.attn_head_dim}")
    if self.attention_impl != "einsum" and self.attention_dropout > 0:
      raise ValueError(f"config.model.attention_impl={self.attention_impl!r} has no attention "
                       f"dropout (config.model.attention_dropout={self.attention_dropout}): only "
                       "the einsum path has it; set config.model.attention_dropout=0 or "
                       "config.model.attention_impl=einsum")
    if self.position == "relative" and self.attention_impl == "blockwise":
      raise ValueError("config.model.position='relative' adds a bias to the attention scores, "
                       "which config.model.attention_impl='blockwise' does not take; use einsum "
                       "or dot_product")
    if self.family != "encoder_decoder":
      for name, default in (("decoder_layers", 0), ("tie_embeddings", True),
                            ("tied_logit_scale", False), ("final_logits_bias", False)):
        if getattr(self, name) != default:
          raise ValueError(f"config.model.{name}={getattr(self, name)!r} is a switch of "
                           f"config.model.family='encoder_decoder', not of {self.family!r}")
      if self.position == "relative":
        raise ValueError("config.model.position='relative' is implemented for "
                         "config.model.family='encoder_decoder' only")
    if self.tied_logit_scale and not self.tie_embeddings:
      raise ValueError("config.model.tied_logit_scale scales the tied LM head, but "
                       "config.model.tie_embeddings=False")
    if self.attention_block <= 0:
      raise ValueError(f"config.model.attention_block must be positive, got {self.attention_block}")
    for name in ("dropout", "attention_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"config.model.{name} must be in [0, 1), got {getattr(self, name)}")
    for name in ("norm_eps", "init_std"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"config.model.{name} must be >= 0, got {getattr(self, name)}")
    if not self.rope_theta > 0:  # the base of the rotary frequencies' powers
      raise ValueError(f"config.model.rope_theta must be > 0, got {self.rope_theta}")
