"""`pretrax sample`: autoregressive continuation with temperature, top-k and top-p sampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data.errors import InputError
from pretrax.inference import loading


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
  """[V] logits -> -inf at the padded rows (ids >= the tokenizer's `vocab_size`) and at padding,
  which a sampler must never draw."""
  ids_v = jnp.arange(logits_v.shape[0])
  return jnp.where((ids_v < vocab_size) & (ids_v != pad_id), logits_v, -jnp.inf)


def _next_token_fn(graphdef, temperature: float, top_k: int, top_p: float, vocab_size: int,
                   pad_id: int):
  """Jitted (params, tokens [1, L], length, key) -> next token id after tokens[0, :length].

  Only ids of the tokenizer are drawn (`tokenizer_logits`)."""

  @jax.jit
  def next_token(params, tokens_1l, length, key):
    model = nnx.merge(graphdef, params)
    segment_ids_1l = (jnp.arange(tokens_1l.shape[1]) < length).astype(jnp.int32)[None]
    logits_v = model(tokens_1l, segment_ids_1l)[0, length - 1]
    logits_v = tokenizer_logits(logits_v, vocab_size, pad_id)
    return jax.random.categorical(key, filter_logits(logits_v, temperature, top_k, top_p))

  return next_token


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: int,
                        top_p: float) -> None:
  """Raises InputError naming the flag for a value no sampler means (nan passes `<` tests)."""
  if max_new_tokens < 1:
    raise InputError(f"--max_new_tokens={max_new_tokens}: must be at least 1")
  if not (math.isfinite(temperature) and temperature >= 0):
    raise InputError(f"--temperature={temperature}: must be a finite number >= 0 (0 = greedy)")
  if top_k < 0:
    raise InputError(f"--top_k={top_k}: must be >= 0 (0 = off)")
  if not 0 < top_p <= 1:
    raise InputError(f"--top_p={top_p}: must be in (0, 1] (1 = off)")


def sample(workdir: str, prompt: str, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0, step: int | None = None,
           stop_at_eos: bool = True) -> str:
  """Returns the continuation of `prompt` (without the prompt)."""
  check_sampling_args(max_new_tokens, temperature, top_k, top_p)
  run = loading.load_run(workdir, step)
  loading.require_language_model(run, "sample", workdir)
  tok = run.tokenizer
  context = run.config.model.max_seq_len if run.config.model.position == "learned" \
      else run.config.data.seq_len
  ids = [tok.bos_id] + tok.encode(prompt).tolist()
  buffer_len = min(context, len(ids) + max_new_tokens)
  next_token = _next_token_fn(run.graphdef, float(temperature), int(top_k), float(top_p),
                              tok.vocab_size, tok.pad_id)
  key = jax.random.key(seed)
  new = []
  for i in range(max_new_tokens):
    window = ids[-buffer_len:]
    tokens = np.zeros((1, buffer_len), np.int32)
    tokens[0, :len(window)] = window
    token = int(next_token(run.params, jnp.asarray(tokens), len(window),
                           jax.random.fold_in(key, i)))
    if stop_at_eos and token == tok.eos_id:
      break
    ids.append(token)
    new.append(token)
  return tok.decode(np.asarray(new, np.int32))
