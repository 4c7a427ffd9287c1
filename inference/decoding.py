"""KV-cache decoding for every decoder: GPT and the encoder-decoder's, batched prompts, one
compiled loop; sampling (greedy, temperature, top-k, top-p) and beam search.

Causal models (`GPT`): the prompts are right-padded to P tokens and run once through the model
(prefill), filling a key/value cache of S = P + max_new_tokens slots; then each step feeds one
token per row and reads its logits. Row b's tokens live at slots (= positions) 0, 1, ...: its
prompt at [0, n_b), the token drawn at step i at n_b + i, overwriting the prefill's padding
there, and every query attends to the slots up to its own position (`MultiHeadAttention.cached`).

Encoder-decoders (`EncoderDecoder`): the sources are right-padded and encoded once; each decoder
layer's cross-attention keys and values of the encoder output are computed once
(`EncoderDecoder.init_cache`); the decoder starts from its start token at position 0 and caches
its self-attention keys and values as above.

The whole loop is one `jax.jit` program (a `lax.while_loop` over steps, static shapes): nothing
recompiles per token, and it stops early when every row is done.

Sampling: the logits of ids outside the tokenizer and of padding are -inf (`tokenizer_logits`),
then temperature / top-k / top-p (`filter_logits`), then a categorical draw with key
fold_in(fold_in(key, row), step); temperature 0 is greedy (the argmax, the first of ties). Row
r's draws do not depend on the other rows. A row stops at EOS (not kept) or once its text
contains a stop string (the token that completes it is kept; `stop_strings.truncate` cuts the
text).

Beam search has the semantics of `transformers`' `generate(num_beams=...)`: per example, the
2·num_beams best continuations of all beams by summed log-probability (log-softmax over the
model's vocabulary, then padding and ids outside the tokenizer removed); those that end (EOS,
a stop string, or max_new_tokens) and rank among the first num_beams join the finished
hypotheses, scored sum / generated_length ** length_penalty (EOS counted); the best num_beams
unfinished ones go on. `early_stopping`: True stops an example once num_beams hypotheses are
finished; False once the best running beam, scored at the current length, cannot beat the worst
finished one; "never" scores it at the longest length when length_penalty > 0.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrax.data.errors import InputError
from pretrax.inference import stop_strings


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


@dataclasses.dataclass(frozen=True)
class Beam:
  """Beam search settings, as `transformers`' `generate` names them (see the module doc)."""
  num_beams: int
  length_penalty: float = 1.0
  early_stopping: bool | str = False  # True | False | "never"
  num_return: int = 1                 # hypotheses returned per input, best first (<= num_beams)


# A score that loses every comparison but stays finite, as transformers uses it.
_LOST = -1.0e9


def _is_seq2seq(model) -> bool:
  return hasattr(model, "encode")


def _prefill(model, inputs_bp, lengths_b, *, max_new_tokens: int, start_id: int):
  """Prompts (causal) or sources (encoder-decoder), right-padded [B, P] with their lengths ->
  ([B, V] logits of each row's first new token, the cache, [B] the position of that token)."""
  b, p = inputs_bp.shape
  positions_bp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  if _is_seq2seq(model):
    segment_ids_bp = (positions_bp < lengths_b[:, None]).astype(jnp.int32)
    memory_bpd = model.encode(inputs_bp, segment_ids_bp)
    cache = model.init_cache(memory_bpd, segment_ids_bp, 1 + max_new_tokens)
    logits_b1v, cache = model.cached_logits(jnp.full((b, 1), start_id, jnp.int32),
                                            jnp.zeros((b, 1), jnp.int32), cache)
    return logits_b1v[:, 0], cache, jnp.ones(b, jnp.int32)
  cache = model.init_cache(b, p + max_new_tokens)
  logits_bpv, cache = model.cached_logits(inputs_bp, positions_bp, cache)
  return logits_bpv[jnp.arange(b), lengths_b - 1], cache, lengths_b.astype(jnp.int32)


def _step(model, token_b, positions_b, cache):
  logits_b1v, cache = model.cached_logits(token_b[:, None], positions_b[:, None], cache)
  return logits_b1v[:, 0], cache


def _sample(graphdef, params, inputs_bp, lengths_b, keys_b, stop_next_qv, stop_hits_qv, *,
            max_new_tokens: int, sampling: Sampling, start_id: int, keep_logits: bool):
  """The sampling loop -> ([B, N] tokens, [B] how many each row keeps, [B] whether it stopped
  (EOS or a stop string), steps run, [B, N, V] logits if kept)."""
  model = nnx.merge(graphdef, params)
  b = inputs_bp.shape[0]
  first_bv, cache, positions_b = _prefill(model, inputs_bp, lengths_b,
                                          max_new_tokens=max_new_tokens, start_id=start_id)
  v = first_bv.shape[-1]

  def draw(logits_bv, step):
    logits_bv = tokenizer_logits(logits_bv, sampling.vocab_size, sampling.pad_id)
    if sampling.temperature <= 0:  # greedy: no random draw over the vocabulary
      return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    filtered_bv = jax.vmap(lambda l: filter_logits(l, sampling.temperature, sampling.top_k,
                                                   sampling.top_p))(logits_bv)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_b)
    return jax.vmap(jax.random.categorical)(keys, filtered_bv).astype(jnp.int32)

  def body(state):
    step, logits_bv, positions_b, cache, tokens_bn, kept_b, done_b, stop_b, kept_bnv = state
    token_b = draw(logits_bv, step)
    tokens_bn = tokens_bn.at[:, step].set(jnp.where(done_b, sampling.pad_id, token_b))
    if keep_logits:
      kept_bnv = kept_bnv.at[:, step].set(logits_bv)
    eos_b = token_b == sampling.eos_id
    stop_b, hit_b = stop_strings.advance(stop_b, token_b, stop_next_qv, stop_hits_qv)
    kept_b = kept_b + (~done_b & ~eos_b)
    done_b = done_b | eos_b | hit_b
    logits_bv, cache = jax.lax.cond(step + 1 < max_new_tokens, functools.partial(_step, model),
                                    lambda t, q, c: (logits_bv, c), token_b, positions_b, cache)
    return (step + 1, logits_bv, positions_b + 1, cache, tokens_bn, kept_b, done_b, stop_b,
            kept_bnv)

  def more(state):
    step, done_b = state[0], state[6]
    return (step < max_new_tokens) & ~jnp.all(done_b)

  kept_bnv = jnp.zeros((b, max_new_tokens if keep_logits else 0, v), jnp.float32)
  zeros_b = jnp.zeros(b, jnp.int32)
  state = (jnp.int32(0), first_bv, positions_b, cache,
           jnp.full((b, max_new_tokens), sampling.pad_id, jnp.int32), zeros_b,
           jnp.zeros(b, bool), zeros_b, kept_bnv)
  step, _, _, _, tokens_bn, kept_b, done_b, _, kept_bnv = jax.lax.while_loop(more, body, state)
  return tokens_bn, kept_b, done_b, step, kept_bnv


def _beam_search(graphdef, params, inputs_bp, lengths_b, stop_next_qv, stop_hits_qv, *,
                 max_new_tokens: int, beam: Beam, sampling: Sampling, start_id: int):
  """The beam search loop (module doc) -> ([b, k, n] finished hypotheses best first, [b, k]
  their lengths (EOS included), [b, k] scores, [b, k] whether each ended by EOS, steps run).

  Shape letters: b inputs, k = num_beams beams, c = 2k candidates, n = max_new_tokens, v the
  vocabulary; B = b·k model rows (input i's beams at rows i·k .. i·k + k - 1).
  """
  model = nnx.merge(graphdef, params)
  nb, n = beam.num_beams, max_new_tokens
  b = inputs_bp.shape[0]
  first_bv, cache, positions_b = _prefill(model, inputs_bp, lengths_b, max_new_tokens=n,
                                          start_id=start_id)
  v = first_bv.shape[-1]
  candidates = 2 * nb
  repeat = lambda x: jnp.repeat(x, nb, axis=0)
  cache = jax.tree.map(repeat, cache)
  in_top_beams_k = jnp.arange(candidates) < nb
  length_penalty = float(beam.length_penalty)
  early = beam.early_stopping

  def gather(x_bk, index_bj):  # along the beam axis
    return jnp.take_along_axis(x_bk, index_bj.reshape(index_bj.shape + (1,) * (x_bk.ndim - 2)),
                               axis=1)

  def body(state):
    (step, logits_Bv, positions_B, cache, running_seqs_bkn, running_scores_bk, stop_bk,
     seqs_bkn, scores_bk, lengths_bk, eos_bk, finished_bk, open_b, _) = state
    logp_Bv = jax.nn.log_softmax(logits_Bv.astype(jnp.float32), axis=-1)
    logp_Bv = tokenizer_logits(logp_Bv, sampling.vocab_size, sampling.pad_id)
    total_bkv = logp_Bv.reshape(b, nb, v) + running_scores_bk[:, :, None]
    top_bc, index_bc = jax.lax.top_k(total_bkv.reshape(b, nb * v), candidates)
    parent_bc, token_bc = index_bc // v, (index_bc % v).astype(jnp.int32)
    top_seqs_bcn = gather(running_seqs_bkn, parent_bc).at[:, :, step].set(token_bc)
    parent_stop_bc = gather(stop_bk, parent_bc)
    next_stop_bc, hit_bc = stop_strings.advance(parent_stop_bc, token_bc, stop_next_qv,
                                                stop_hits_qv)
    eos_bc = token_bc == sampling.eos_id
    ends_bc = eos_bc | hit_bc | (step + 1 >= n)
    # the best num_beams that go on
    live_bc = top_bc + ends_bc * _LOST
    _, pick_bk = jax.lax.top_k(live_bc, nb)
    running_seqs_bkn = gather(top_seqs_bcn, pick_bk)
    running_scores_bk = gather(live_bc, pick_bk)
    stop_bk = gather(next_stop_bc, pick_bk)
    parent_bk = gather(parent_bc, pick_bk)
    # the finished hypotheses: the old ones and those ending among the first num_beams
    scored_bc = top_bc / ((step + 1).astype(jnp.float32) ** length_penalty)
    if early is True:
      scored_bc += jnp.all(finished_bk, axis=-1, keepdims=True) * _LOST
    scored_bc += ~open_b[:, None] * _LOST
    scored_bc += ~(ends_bc & in_top_beams_k) * _LOST
    merged = lambda old, new: jnp.concatenate([old, new], axis=1)
    _, keep_bk = jax.lax.top_k(merged(scores_bk, scored_bc), nb)
    seqs_bkn = gather(merged(seqs_bkn, top_seqs_bcn), keep_bk)
    scores_bk = gather(merged(scores_bk, scored_bc), keep_bk)
    lengths_bk = gather(merged(lengths_bk, jnp.broadcast_to(step + 1, (b, candidates))), keep_bk)
    eos_bk = gather(merged(eos_bk, eos_bc), keep_bk)
    finished_bk = gather(merged(finished_bk, ends_bc & in_top_beams_k), keep_bk)
    # can a running beam still beat the worst finished hypothesis?
    hypothetical = n if (early == "never" and length_penalty > 0) else step + 1
    best_b1 = running_scores_bk[:, :1] / (jnp.float32(hypothetical) ** length_penalty)
    worst_bk = jnp.where(finished_bk, jnp.min(scores_bk, axis=1, keepdims=True), _LOST)
    open_b = open_b & jnp.any(best_b1 > worst_bk, axis=-1)
    rows_B = (jnp.arange(b)[:, None] * nb + parent_bk).reshape(-1)
    cache = {**cache, "self": jax.tree.map(lambda x: x[rows_B], cache["self"])}
    go_on = jnp.any(open_b) & ~jnp.all(ends_bc)
    if early is True:
      go_on &= ~jnp.all(finished_bk)
    logits_Bv, cache = jax.lax.cond(go_on & (step + 1 < n), functools.partial(_step, model),
                                    lambda t, q, c: (logits_Bv, c),
                                    running_seqs_bkn[:, :, step].reshape(-1), positions_B, cache)
    return (step + 1, logits_Bv, positions_B + 1, cache, running_seqs_bkn, running_scores_bk,
            stop_bk, seqs_bkn, scores_bk, lengths_bk, eos_bk, finished_bk, open_b, go_on)

  def more(state):
    return (state[0] < n) & state[-1]

  fill_bkn = jnp.full((b, nb, n), sampling.pad_id, jnp.int32)
  zeros_bk = jnp.zeros((b, nb), jnp.int32)
  false_bk = jnp.zeros((b, nb), bool)
  # Only the first beam starts: the others would repeat its continuations.
  running_scores_bk = jnp.where(jnp.arange(nb) == 0, 0.0, _LOST)[None].repeat(b, axis=0)
  state = (jnp.int32(0), repeat(first_bv), repeat(positions_b), cache, fill_bkn, running_scores_bk,
           zeros_bk, fill_bkn, jnp.full((b, nb), _LOST, jnp.float32), zeros_bk, false_bk, false_bk,
           jnp.ones(b, bool), jnp.bool_(True))
  final = jax.lax.while_loop(more, body, state)
  step, seqs_bkn, scores_bk, lengths_bk, eos_bk = final[0], *final[7:11]
  return seqs_bkn, lengths_bk, scores_bk, eos_bk, step


def _to_host(x: jax.Array) -> np.ndarray:
  """A decoding output as numpy; gathered from every process when the model spans several."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


@dataclasses.dataclass
class Decoded:
  """What a `Decoder` returns, per row (per input, times `Beam.num_return` for beam search, best
  first): the new tokens (without a final EOS; with the token that completed a stop string),
  whether the row stopped (EOS, stop string) before max_new_tokens, the logits each token was
  drawn from if asked for ([n, V] float32, before any filtering; sampling only), and the
  hypothesis' score (beam search only)."""
  tokens: list[np.ndarray]
  stopped: list[bool]
  logits: list[np.ndarray] | None
  steps: int                 # decoding steps run (the longest row, EOS included)
  scores: list[float] | None = None


class Decoder:
  """A model's decoding programs: `decoder(inputs, ...)` samples continuations of a batch of
  prompts (causal models) or outputs for a batch of sources (encoder-decoders, whose decoder
  starts from `start_id`); `decoder.beam_search(...)` searches. Each compiles once per (batch,
  input length, max_new_tokens, settings) and is reused for equal shapes."""

  def __init__(self, model: nnx.Module, *, start_id: int | None = None):
    self.seq2seq = _is_seq2seq(model)
    if self.seq2seq and start_id is None:
      raise ValueError("an encoder-decoder's Decoder needs the decoder's start_id")
    self.start_id = -1 if start_id is None else int(start_id)
    self.vocab = model.config.vocab_size
    self.graphdef, self.params = nnx.split(model)
    self.compiled = jax.jit(functools.partial(_sample, self.graphdef),
                            static_argnames=("max_new_tokens", "sampling", "start_id",
                                             "keep_logits"))
    self.compiled_beam = jax.jit(functools.partial(_beam_search, self.graphdef),
                                 static_argnames=("max_new_tokens", "beam", "sampling",
                                                  "start_id"))

  def load(self, model: nnx.Module) -> None:
    """Decodes with `model`'s parameters from now on (a model of the same structure: the
    compiled programs are kept)."""
    graphdef, self.params = nnx.split(model)
    if graphdef != self.graphdef:
      raise ValueError("Decoder.load needs a model of the structure the decoder was built for")

  def _batch(self, inputs: list[np.ndarray], width: int | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs -> ([B, P] right-padded, [B] lengths); P is the longest input or `width` if more
    (one compiled program for inputs of different lengths)."""
    if not inputs:
      raise InputError("no prompts to continue" if not self.seq2seq else "no sources to decode")
    lengths = np.array([len(p) for p in inputs], np.int32)
    if lengths.min() < 1:
      raise InputError("every prompt needs at least one token (the tokenizer's BOS counts)"
                       if not self.seq2seq else "every source needs at least one token")
    inputs_bp = np.zeros((len(inputs), max(int(lengths.max()), width or 0)), np.int32)
    for row, ids in enumerate(inputs):
      inputs_bp[row, :len(ids)] = ids
    return inputs_bp, lengths

  @staticmethod
  def _stop_tables(stop, vocab: int) -> tuple[jax.Array, jax.Array]:
    """A `StopStrings`' tables for the model's V ids; without stop strings, one state that never
    hits."""
    if stop is None or not stop:
      return jnp.zeros((1, vocab), jnp.int32), jnp.zeros((1, vocab), bool)
    return tuple(jnp.asarray(table) for table in stop.tables(vocab))

  def __call__(self, inputs: list[np.ndarray], max_new_tokens: int, sampling: Sampling, *,
               seed: int = 0, keep_logits: bool = False, stop=None,
               width: int | None = None) -> Decoded:
    """Up to `max_new_tokens` new tokens for each input ([n_i] int token ids, n_i >= 1);
    `stop`: a `stop_strings.StopStrings` (or None); `width`: see `_batch`.

    Causal models: positions run from 0 in every row, so n_i + max_new_tokens must fit the
    model's positions (the caller shortens prompts; `context_length` says how far a model
    reaches).
    """
    inputs_bp, lengths = self._batch(inputs, width)
    key = jax.random.key(seed)
    keys_b = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(len(inputs)))
    tokens_bn, kept_b, done_b, steps, kept_bnv = self.compiled(
        self.params, jnp.asarray(inputs_bp), jnp.asarray(lengths), keys_b,
        *self._stop_tables(stop, self.vocab), max_new_tokens=max_new_tokens,
        sampling=sampling, start_id=self.start_id, keep_logits=keep_logits)
    tokens_bn, kept_b, done_b = _to_host(tokens_bn), _to_host(kept_b), _to_host(done_b)
    kept_bnv = _to_host(kept_bnv) if keep_logits else None
    return Decoded(tokens=[tokens_bn[r, :kept_b[r]] for r in range(len(inputs))],
                   stopped=[bool(d) for d in done_b],
                   logits=[kept_bnv[r, :kept_b[r]] for r in range(len(inputs))]
                   if keep_logits else None,
                   steps=int(steps))

  def beam_search(self, inputs: list[np.ndarray], max_new_tokens: int, beam: Beam,
                  sampling: Sampling, *, stop=None, width: int | None = None) -> Decoded:
    """Beam search (module doc) for each input; `sampling` gives the vocabulary, padding and EOS
    (its temperature, top-k and top-p are not used). Rows: `beam.num_return` per input."""
    if beam.num_beams < 1:
      raise InputError(f"num_beams={beam.num_beams}: must be at least 1")
    usable = sampling.vocab_size - (0 <= sampling.pad_id < sampling.vocab_size)
    if 2 * beam.num_beams > usable:
      raise InputError(f"num_beams={beam.num_beams}: beam search keeps 2 x num_beams candidates "
                       f"a step, more than the {usable} ids the tokenizer can emit")
    if not 1 <= beam.num_return <= beam.num_beams:
      raise InputError(f"{beam.num_return} hypotheses asked for each input, but num_beams="
                       f"{beam.num_beams}: return between 1 and num_beams")
    if beam.early_stopping not in (True, False, "never"):
      raise InputError(f"early_stopping={beam.early_stopping!r}: must be True, False or 'never'")
    inputs_bp, lengths = self._batch(inputs, width)
    seqs_bkn, lengths_bk, scores_bk, eos_bk, steps = self.compiled_beam(
        self.params, jnp.asarray(inputs_bp), jnp.asarray(lengths),
        *self._stop_tables(stop, self.vocab), max_new_tokens=max_new_tokens, beam=beam,
        sampling=sampling, start_id=self.start_id)
    seqs_bkn, lengths_bk = _to_host(seqs_bkn), _to_host(lengths_bk)
    scores_bk, eos_bk = _to_host(scores_bk), _to_host(eos_bk)
    tokens, stopped, scores = [], [], []
    for row in range(len(inputs)):
      for k in range(beam.num_return):
        n = int(lengths_bk[row, k]) - bool(eos_bk[row, k])
        tokens.append(seqs_bkn[row, k, :n])
        stopped.append(bool(eos_bk[row, k]) or n < max_new_tokens)
        scores.append(float(scores_bk[row, k]))
    return Decoded(tokens=tokens, stopped=stopped, logits=None, steps=int(steps), scores=scores)


def decode_all(decoder: Decoder, inputs: list[np.ndarray], max_new_tokens: int,
               sampling: Sampling, *, beam: Beam | None = None, stop=None, batch_size: int = 32,
               max_width: int | None = None, seed: int = 0) -> list[np.ndarray]:
  """Decodes any number of inputs in batches of one shape: sorted by length (a batch pads
  little), `batch_size` rows (the last batch filled with copies, dropped), inputs padded to a
  power of two of at least 8, at most `max_width`: a handful of compiled programs for a whole
  file. Beam search when `beam` has more than one beam. Returns the tokens of each input, in
  order (the best hypothesis for beam search)."""
  if not inputs:
    raise InputError("no inputs to decode")
  batch_size = min(batch_size, len(inputs))
  order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
  out: list[np.ndarray] = [np.zeros(0, np.int32)] * len(inputs)
  for first in range(0, len(order), batch_size):
    rows = order[first:first + batch_size]
    batch = [inputs[i] for i in rows]
    longest = max(len(ids) for ids in batch)
    width = max(8, 1 << (longest - 1).bit_length())
    width = max(longest, min(width, max_width or width))
    batch += [batch[-1]] * (batch_size - len(batch))
    if beam is not None and beam.num_beams > 1:
      decoded = decoder.beam_search(batch, max_new_tokens, beam, sampling, stop=stop, width=width)
    else:
      decoded = decoder(batch, max_new_tokens, sampling, seed=seed + first, stop=stop,
                        width=width)
    for i, tokens in zip(rows, decoded.tokens):
      out[i] = tokens
  return out


def decode(model: nnx.Module, prompts: list[np.ndarray], max_new_tokens: int, sampling: Sampling,
           *, seed: int = 0, keep_logits: bool = False, start_id: int | None = None) -> Decoded:
  """`Decoder(model)(prompts, ...)`: one batch (compiles its program)."""
  return Decoder(model, start_id=start_id)(prompts, max_new_tokens, sampling, seed=seed,
                                           keep_logits=keep_logits)


def context_length(config) -> int:
  """How many positions a causal model of `config` (a run's Config) decodes: its learned
  positions, or the sequence length it was trained on (rotary)."""
  return config.model.max_seq_len if config.model.position == "learned" else config.data.seq_len
