"""KV-cache decoding for causal language models: batched prompts, one compiled loop.

`decode` continues a batch of prompts of different lengths. The prompts are right-padded to P
tokens and run once through the model (prefill), filling a key/value cache of S = P +
max_new_tokens slots; then each step feeds one token per row and reads its logits. Row b's
tokens live at slots (= positions) 0, 1, ...: its prompt at [0, n_b), the token drawn at step i at
n_b + i, overwriting the prefill's padding there, and every query attends to the slots up to its
own position (`MultiHeadAttention.cached`). The whole loop is one `jax.jit` program (a
`lax.while_loop` over steps, static shapes): nothing recompiles per token, and it stops early
when every row has drawn EOS.

Drawing: the logits of ids outside the tokenizer and of padding are -inf (`tokenizer_logits`),
then temperature / top-k / top-p (`filter_logits`; temperature 0 is greedy), then a categorical
draw with key fold_in(fold_in(key, row), step). Row r's draws do not depend on the other rows.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data.errors import InputError


def filter_logits(logits_v: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """[V] logits -> [V] logits with everything outside the top-k / nucleus set to -inf.

  temperature <= 0 means greedy (only the argmax survives).
  """
  logits_v = logits_v.astype(jnp.float32)
  if temperature <= 0:
    return jnp.where(logits_v == logits_v.max(), 0.0, -jnp.inf)
  logits_v = logits_v / temperature
  if top_k > 0:
    kth = jnp.sort(logits_v)[-min(top_k, logits_v.shape[0])]
    logits_v = jnp.where(logits_v < kth, -jnp.inf, logits_v)
  if 0.0 < top_p < 1.0:
    order = jnp.argsort(-logits_v)
    probs = jax.nn.softmax(logits_v[order])
    # keep the smallest prefix whose mass reaches top_p (always at least the top token)
    keep_sorted = (jnp.cumsum(probs) - probs) < top_p
    keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
    logits_v = jnp.where(keep, logits_v, -jnp.inf)
  return logits_v


def tokenizer_logits(logits_v: jax.Array, vocab_size: int, pad_id: int) -> jax.Array:
  """[..., V] logits -> -inf at the padded rows (ids >= the tokenizer's `vocab_size`) and at
  padding, which a sampler must never draw."""
  ids_v = jnp.arange(logits_v.shape[-1])
  return jnp.where((ids_v < vocab_size) & (ids_v != pad_id), logits_v, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How tokens are drawn (see the module doc)."""
  temperature: float = 1.0   # 0: greedy
  top_k: int = 0             # 0: off
  top_p: float = 1.0         # 1: off
  vocab_size: int = 0        # the tokenizer's ids: [0, vocab_size)
  pad_id: int = 0
  eos_id: int = -1           # -1: never stop early


def _decode(graphdef, params, prompts_bp, lengths_b, keys_b, *, max_new_tokens: int,
            sampling: Sampling, keep_logits: bool):
  model = nnx.merge(graphdef, params)
  b, p = prompts_bp.shape
  cache = model.init_cache(b, p + max_new_tokens)
  positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  logits_bpv, cache = model.cached_logits(prompts_bp, positions_bp, cache)
  first_bv = logits_bpv[jnp.arange(b), lengths_b - 1]
  v = first_bv.shape[-1]

  def draw(logits_bv, step):
    logits_bv = tokenizer_logits(logits_bv, sampling.vocab_size, sampling.pad_id)
    filtered_bv = jax.vmap(lambda l: filter_logits(l, sampling.temperature, sampling.top_k,
                                                   sampling.top_p))(logits_bv)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_b)
    return jax.vmap(jax.random.categorical)(keys, filtered_bv).astype(jnp.int32)

  def forward(token_b, positions_b, cache):
    logits_b1v, cache = model.cached_logits(token_b[:, None], positions_b[:, None], cache)
    return logits_b1v[:, 0], cache

  def body(state):
    step, logits_bv, positions_b, cache, tokens_bn, done_b, kept_bnv = state
    token_b = draw(logits_bv, step)
    tokens_bn = tokens_bn.at[:, step].set(jnp.where(done_b, sampling.pad_id, token_b))
    if keep_logits:
      kept_bnv = kept_bnv.at[:, step].set(logits_bv)
    done_b = done_b | (token_b == sampling.eos_id)
    logits_bv, cache = jax.lax.cond(step + 1 < max_new_tokens, forward,
                                    lambda t, q, c: (logits_bv, c), token_b, positions_b, cache)
    return step + 1, logits_bv, positions_b + 1, cache, tokens_bn, done_b, kept_bnv

  def more(state):
    step, done_b = state[0], state[5]
    return (step < max_new_tokens) & ~jnp.all(done_b)

  kept_bnv = jnp.zeros((b, max_new_tokens if keep_logits else 0, v), jnp.float32)
  state = (jnp.int32(0), first_bv, lengths_b.astype(jnp.int32), cache,
           jnp.full((b, max_new_tokens), sampling.pad_id, jnp.int32), jnp.zeros(b, bool), kept_bnv)
  step, _, _, _, tokens_bn, _, kept_bnv = jax.lax.while_loop(more, body, state)
  return tokens_bn, step, kept_bnv


@dataclasses.dataclass
class Decoded:
  """What `decode` returns: per row, the new tokens (up to and without EOS, which stops a row),
  and the logits each was drawn from if asked for ([n, V] float32, before any filtering)."""
  tokens: list[np.ndarray]
  logits: list[np.ndarray] | None
  steps: int                 # decoding steps run (the longest row, EOS included)


class Decoder:
  """A model's decoding program: `decoder(prompts, ...)` continues a batch of prompts. It compiles
  once per (batch, prompt length, max_new_tokens, sampling) and is reused for equal shapes."""

  def __init__(self, model: nnx.Module):
    self.graphdef, self.params = nnx.split(model)
    self.compiled = jax.jit(functools.partial(_decode, self.graphdef),
                            static_argnames=("max_new_tokens", "sampling", "keep_logits"))

  def __call__(self, prompts: list[np.ndarray], max_new_tokens: int, sampling: Sampling, *,
               seed: int = 0, keep_logits: bool = False) -> Decoded:
    """Continues each prompt ([n_i] int token ids, n_i >= 1) by up to `max_new_tokens` tokens.

    Positions run from 0 in every row, so n_i + max_new_tokens must fit the model's positions
    (the caller shortens prompts; `context_length` says how far a model reaches).
    """
    if not prompts:
      raise InputError("no prompts to continue")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
      raise InputError("every prompt needs at least one token (the tokenizer's BOS counts)")
    prompts_bp = np.zeros((len(prompts), int(lengths.max())), np.int32)
    for row, ids in enumerate(prompts):
      prompts_bp[row, :len(ids)] = ids
    key = jax.random.key(seed)
    keys_b = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(len(prompts)))
    tokens_bn, steps, kept_bnv = self.compiled(
        self.params, jnp.asarray(prompts_bp), jnp.asarray(lengths), keys_b,
        max_new_tokens=max_new_tokens, sampling=sampling, keep_logits=keep_logits)
    tokens_bn, steps = np.asarray(tokens_bn), int(steps)
    kept_bnv = np.asarray(kept_bnv) if keep_logits else None
    out_tokens, out_logits = [], [] if keep_logits else None
    for row in range(len(prompts)):
      row_tokens = tokens_bn[row, :steps]
      ends = np.flatnonzero(row_tokens == sampling.eos_id)
      n = int(ends[0]) if len(ends) else steps
      out_tokens.append(row_tokens[:n])
      if keep_logits:
        out_logits.append(kept_bnv[row, :n])
    return Decoded(out_tokens, out_logits, steps)


def decode(model: nnx.Module, prompts: list[np.ndarray], max_new_tokens: int, sampling: Sampling,
           *, seed: int = 0, keep_logits: bool = False) -> Decoded:
  """`Decoder(model)(prompts, ...)`: one batch (compiles its program)."""
  return Decoder(model)(prompts, max_new_tokens, sampling, seed=seed, keep_logits=keep_logits)


def context_length(config) -> int:
  """How many positions a causal model of `config` (a run's Config) decodes: its learned
  positions, or the sequence length it was trained on (rotary)."""
  return config.model.max_seq_len if config.model.position == "learned" else config.data.seq_len
