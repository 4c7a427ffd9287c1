"""Stop strings: end a row of a jitted decoding loop once its text contains one, exactly.

The loop sees token ids, not text, and a stop string may span several tokens, sit inside one, or
overlap another ("ab", "bab"). An Aho–Corasick automaton over the UTF-8 bytes of the stop strings
follows the text: its state is the longest end of the bytes so far that begins some stop string.
`StopStrings` folds each token's bytes (`Tokenizer.token_bytes`) into two [S, V] tables, so a
step costs two gathers and nothing is detokenized inside the loop:

  stop = StopStrings(tokenizer, ["\\n\\n", "###"])
  state_b = jnp.zeros(batch, jnp.int32)                    # state 0: no text yet
  ...in the loop body, after drawing token_b:
  state_b, hit_b = advance(state_b, token_b, stop.next_state_sv, stop.hits_sv)
  done_b = done_b | hit_b
  ...after the loop, on the host:
  text, stopped = truncate(tokenizer.decode(row_ids), stop.strings)

Only the generated text is matched: state 0 at the first new token, so a stop string in the
prompt, or begun in the prompt and ended by the generation, does not count. Special ids (EOS,
padding) stand for no bytes and leave the state as it is.
"""

import collections
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pretrax.data.errors import InputError
from pretrax.data.tokenizers import Tokenizer

_NUM_BYTES = 256


class StopStrings:
  """The automaton's tables for one tokenizer and a list of stop strings.

  next_state_sv: [S, V] int32, the state after reading id v's bytes from state s.
  hits_sv: [S, V] bool, a stop string ends inside id v's bytes when read from state s.
  S is the number of distinct prefixes of the strings' bytes (1 with no strings), V the
  tokenizer's `vocab_size`; the tables take 5 * S * V bytes.
  """

  def __init__(self, tokenizer: Tokenizer, strings: Sequence[str] = ()):
    self.strings = check_strings(strings)
    v = tokenizer.vocab_size
    if not self.strings:
      # One state that no token leaves or hits; the tokenizer's byte table is never built.
      self.next_state_sv = np.zeros((1, v), np.int32)
      self.hits_sv = np.zeros((1, v), bool)
      return
    next_state_sx, ends_s = _automaton([s.encode("utf-8") for s in self.strings])
    self.next_state_sv, self.hits_sv = _token_tables(next_state_sx, ends_s,
                                                     tokenizer.token_bytes())

  @property
  def num_states(self) -> int:
    return self.next_state_sv.shape[0]

  @property
  def empty(self) -> bool:
    """True with no stop strings: the loop can leave `advance` out."""
    return not self.strings

  def __bool__(self) -> bool:
    return not self.empty

  def tables(self, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(next_state_sv, hits_sv) with `vocab` columns: a model's ids past the tokenizer's (its
    padded rows) leave the state as it is and never hit; ids past `vocab` are dropped."""
    known = min(self.next_state_sv.shape[1], vocab)
    next_state_sv = np.repeat(np.arange(self.num_states, dtype=np.int32)[:, None], vocab, axis=1)
    next_state_sv[:, :known] = self.next_state_sv[:, :known]
    hits_sv = np.zeros((self.num_states, vocab), bool)
    hits_sv[:, :known] = self.hits_sv[:, :known]
    return next_state_sv, hits_sv

  def truncate(self, text: str) -> tuple[str, bool]:
    """`truncate(text, self.strings)`."""
    return truncate(text, self.strings)


def advance(state_b: jax.Array, token_b: jax.Array, next_state_sv: jax.Array,
            hits_sv: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One decoding step: [B] int32 states and [B] int ids in [0, V) -> ([B] int32 states after
  the ids' bytes, [B] bool True where a stop string ends inside the id's bytes)."""
  return jnp.asarray(next_state_sv)[state_b, token_b], jnp.asarray(hits_sv)[state_b, token_b]


def truncate(text: str, strings: Sequence[str]) -> tuple[str, bool]:
  """-> (the text before the first occurrence of any stop string, whether there was one).

  The first occurrence is the one that starts earliest; the stop string itself is not part of
  the returned text. Without an occurrence: (text, False).
  """
  starts = [i for i in (text.find(s) for s in check_strings(strings)) if i >= 0]
  if not starts:
    return text, False
  return text[:min(starts)], True


def check_strings(strings: Sequence[str]) -> tuple[str, ...]:
  """The stop strings as a tuple; InputError for one str instead of a list, a non-str, or ""."""
  if isinstance(strings, (str, bytes)):
    raise InputError(f"stop strings must be a list of str, not one {type(strings).__name__} "
                     f"(a str would stop at each of its characters): pass [{strings!r}]")
  strings = tuple(strings)
  for index, s in enumerate(strings):
    if not isinstance(s, str):
      raise InputError(f"stop string {index} is {s!r} of type {type(s).__name__}, expected str")
    if not s:
      raise InputError(f"stop string {index} is empty: it would stop every row before its "
                       "first token; remove it from the stop strings")
  return strings


def _automaton(patterns: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Non-empty byte strings -> ([S, 256] int32 state after reading each byte from state s,
  [S] bool some string ends at state s). States are trie nodes, 0 the root, in creation order."""
  children = [{}]  # state -> {byte: child state}
  ends = [False]
  for pattern in patterns:
    state = 0
    for byte in pattern:
      if byte not in children[state]:
        children[state][byte] = len(children)
        children.append({})
        ends.append(False)
      state = children[state][byte]
    ends[state] = True

  next_state_sx = np.zeros((len(children), _NUM_BYTES), np.int32)
  fail = [0] * len(children)  # the longest proper suffix of a state's bytes that is a state
  ends_s = np.array(ends)
  # Breadth first, so a state's fail state (shorter) has its row and `ends` complete already.
  queue = collections.deque([0])
  while queue:
    state = queue.popleft()
    if state:
      next_state_sx[state] = next_state_sx[fail[state]]
    for byte, child in children[state].items():
      next_state_sx[state, byte] = child
      fail[child] = next_state_sx[fail[state], byte] if state else 0
      ends_s[child] |= ends_s[fail[child]]  # "ab" ends inside "bab"
      queue.append(child)
  return next_state_sx, ends_s


def _token_tables(next_state_sx: np.ndarray, ends_s: np.ndarray,
                  token_bytes: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Byte automaton and [V] token bytes -> ([S, V] int32 next states, [S, V] bool hits).

  Reads byte j of every token at once, from every state: a loop over the longest token's bytes,
  not over states and tokens.
  """
  num_states = next_state_sx.shape[0]
  lengths_v = np.fromiter(map(len, token_bytes), np.int64, count=len(token_bytes))
  flat = np.frombuffer(b"".join(token_bytes), np.uint8)
  # Longest tokens first, so the tokens with a byte j are the first `count` columns.
  order_v = np.argsort(-lengths_v, kind="stable")
  lengths_sorted_v = lengths_v[order_v]
  starts_sorted_v = (np.cumsum(lengths_v) - lengths_v)[order_v]
  state_sv = np.repeat(np.arange(num_states, dtype=np.int32)[:, None], len(token_bytes), axis=1)
  hits_sv = np.zeros(state_sv.shape, bool)
  for j in range(int(lengths_v.max(initial=0))):
    count = int(np.count_nonzero(lengths_sorted_v > j))
    byte_v = flat[starts_sorted_v[:count] + j]
    state = next_state_sx[state_sv[:, :count], byte_v[None, :]]
    state_sv[:, :count] = state
    hits_sv[:, :count] |= ends_s[state]
  next_state_sv = np.empty_like(state_sv)
  next_state_sv[:, order_v] = state_sv
  hits_unsorted_sv = np.empty_like(hits_sv)
  hits_unsorted_sv[:, order_v] = hits_sv
  return next_state_sv, hits_unsorted_sv
