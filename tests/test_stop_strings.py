"""Stop strings: per-token bytes, the automaton's hits against `in` on the bytes so far,
truncate."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pretrax.data import tokenizers
from pretrax.data.errors import InputError
from pretrax.inference import stop_strings
from pretrax.inference.stop_strings import StopStrings

MIXED = "Héllo, 世界 🙂\n\n  two  spaces\tand\ttabs\r\n[MASK] <s> x\x00 end "
# Spans tokens, overlaps ("ab" ends inside "bab"; "abab" needs a fail link), non-ASCII, blank line.
STRINGS = ("ab", "bab", "abab", "é", "\n\n", "e t")
ALPHABET = ["a", "b", "ab", "ba", "é", "e", "t", " ", "\n", "the", "x", "世"]


@pytest.fixture(scope="module")
def sentencepiece_tok(shakespeare_text, tmp_path_factory):
  """A unigram model of 1000 pieces trained on 100 KB of Shakespeare (about a second)."""
  prefix = str(tmp_path_factory.mktemp("spm") / "spm")
  return tokenizers.train_sentencepiece(shakespeare_text[:100_000].split("\n\n"), prefix,
                                        vocab_size=1000)


class _ShortRunsTokenizer:
  """Every run of 1 to 4 "a"/"b" bytes is a token (after 7 specials): tokens of many lengths
  whose bytes overlap the stop strings everywhere."""

  def __init__(self):
    runs = [bytes(r) for n in range(1, 5) for r in itertools.product(b"ab", repeat=n)]
    self._bytes = [b""] * 7 + runs + [b" ", "é".encode()]
    self.vocab_size = len(self._bytes)

  def token_bytes(self):
    return list(self._bytes)


def _hits(stop: StopStrings, ids_bt: np.ndarray) -> np.ndarray:
  """[B, T] ids -> [B, T] bool, stepping `advance` in a jitted scan as a decoding loop would."""
  @jax.jit
  def run(ids_bt, next_state_sv, hits_sv):
    def step(state_b, token_b):
      return stop_strings.advance(state_b, token_b, next_state_sv, hits_sv)
    _, hits_tb = jax.lax.scan(step, jnp.zeros(ids_bt.shape[0], jnp.int32), ids_bt.T)
    return hits_tb.T
  return np.asarray(run(jnp.asarray(ids_bt), stop.next_state_sv, stop.hits_sv))


def _check_against_in(tok, stop: StopStrings, ids_bt: np.ndarray) -> int:
  """Hit at step t <=> a stop string ends inside token t's bytes; so the first hit is the first
  step where `s in bytes_so_far` for some stop string s. Returns the rows with a hit."""
  token_bytes = tok.token_bytes()
  patterns = [s.encode() for s in stop.strings]
  hits_bt = _hits(stop, ids_bt)
  first_hits = 0
  for ids_t, hits_t in zip(ids_bt, hits_bt):
    so_far = b""
    want = []
    first = None
    for t, i in enumerate(ids_t):
      before = len(so_far)
      so_far += token_bytes[i]
      want.append(any(p in so_far[max(0, before - len(p) + 1):] for p in patterns))
      if first is None and any(p in so_far for p in patterns):
        first = t
    assert hits_t.tolist() == want, (ids_t, [token_bytes[i] for i in ids_t])
    got_first = int(np.argmax(hits_t)) if hits_t.any() else None
    assert got_first == first
    first_hits += first is not None
  return first_hits


def _encoded_rows(tok, rng, rows: int, length: int) -> np.ndarray:
  """Random texts over ALPHABET, encoded and cut to [rows, length] ids (pad after the end)."""
  ids_bt = np.full((rows, length), tokenizers.PAD_ID, np.int32)
  for row in ids_bt:
    text = "".join(rng.choice(ALPHABET, size=length))
    ids = tok.encode(text)[:length]
    row[:len(ids)] = ids
  return ids_bt


def _pool_rows(tok, rng, rows: int, length: int) -> np.ndarray:
  """Random ids from the tokens made only of ALPHABET's bytes (byte pieces of é alone too) and
  the specials: sequences an encoder would not produce, with broken UTF-8."""
  allowed = set("".join(ALPHABET).encode())
  pool = [i for i, b in enumerate(tok.token_bytes()) if set(b) <= allowed]
  return rng.choice(pool, size=(rows, length)).astype(np.int32)


# Tokenizer.token_bytes.

@pytest.mark.parametrize("kind", ["byte", "sentencepiece"])
def test_token_bytes_join_to_the_text(kind, sentencepiece_tok):
  tok = tokenizers.ByteTokenizer() if kind == "byte" else sentencepiece_tok
  table = tok.token_bytes()
  assert len(table) == tok.vocab_size and all(type(b) is bytes for b in table)
  assert table[:7] == [b""] * 7
  assert [len(b) for b in table] == tok.token_byte_lengths().tolist()
  for text in [MIXED, "the king", "a\n\nb"]:
    assert b"".join(table[i] for i in tok.encode(text)) == text.encode()
  # A literal "▁" in the text is a space piece to SentencePiece: it decodes, and stands, for " ".
  ids = tok.encode("a\u2581x")
  assert b"".join(table[i] for i in ids) == tok.decode(ids).encode()
  table[10] = b"changed"
  assert tok.token_bytes()[10] != b"changed"  # a copy: the cache stays intact


def test_token_bytes_of_pieces(sentencepiece_tok):
  tok = tokenizers.ByteTokenizer()
  assert tok.token_bytes()[7 + 0x0A] == b"\n" and tok.token_bytes()[7 + 0xFF] == b"\xff"
  table = sentencepiece_tok.token_bytes()
  sp = sentencepiece_tok._sp
  newline = sp.piece_to_id("<0x0A>")
  assert sp.is_byte(newline) and table[newline] == b"\n"
  spaced = [i for i in range(7, sp.get_piece_size()) if sp.id_to_piece(i).startswith("\u2581")
            and len(sp.id_to_piece(i)) > 1]
  assert spaced and all(table[i] == b" " + sp.id_to_piece(i)[1:].encode() for i in spaced)


# The automaton in a decoding loop.

def test_byte_tokenizer_hits_where_in_finds_a_stop_string():
  tok = tokenizers.ByteTokenizer()
  rng = np.random.default_rng(0)
  stop = StopStrings(tok, STRINGS)
  hit_rows = (_check_against_in(tok, stop, _encoded_rows(tok, rng, 64, 24))
              + _check_against_in(tok, stop, _pool_rows(tok, rng, 64, 24)))
  assert 0 < hit_rows < 128  # the rows exercise both outcomes


def test_sentencepiece_hits_where_in_finds_a_stop_string(sentencepiece_tok):
  tok = sentencepiece_tok
  rng = np.random.default_rng(1)
  hit_rows = 0
  for strings in [STRINGS, ("the", " and", "é\n"), ("\n\n",)]:
    stop = StopStrings(tok, strings)
    hit_rows += (_check_against_in(tok, stop, _encoded_rows(tok, rng, 48, 16))
                 + _check_against_in(tok, stop, _pool_rows(tok, rng, 48, 16)))
  assert 0 < hit_rows < 3 * 96


def test_tokens_of_many_lengths_hit_where_in_finds_a_stop_string():
  tok = _ShortRunsTokenizer()
  rng = np.random.default_rng(2)
  hit_rows = sum(_check_against_in(tok, StopStrings(tok, strings), _pool_rows(tok, rng, 64, 12))
                 for strings in [STRINGS, ("aaa", "abba", "b"), ("abbaabab", "é")])
  assert 0 < hit_rows < 3 * 64


def test_a_stop_string_inside_one_token(sentencepiece_tok):
  tok = sentencepiece_tok
  table = tok.token_bytes()
  words = [i for i in range(7, tok.vocab_size) if table[i].isalpha()]
  word = max(words, key=lambda i: len(table[i]))
  inner = table[word][1:-1].decode()
  assert len(inner) >= 2
  stop = StopStrings(tok, [inner, "zzz"])
  _, hit_b = stop_strings.advance(jnp.zeros(1, jnp.int32), jnp.array([word]), stop.next_state_sv,
                                  stop.hits_sv)
  assert hit_b.tolist() == [True]
  assert stop.truncate(tok.decode([word])) == (table[word][:1].decode(), True)


def test_a_string_spanning_tokens_hits_at_its_last_byte():
  tok = tokenizers.ByteTokenizer()
  stop = StopStrings(tok, ["bab", "\n\n", "é"])
  for text, first in [("xbab!", 3), ("ab\n\n", 3), ("caf\u00e9", 4), ("ba ab", None)]:
    hits = _hits(stop, tok.encode(text)[None])[0]
    assert (int(np.argmax(hits)) if hits.any() else None) == first, text


def test_no_stop_strings():
  tok = tokenizers.ByteTokenizer()
  stop = StopStrings(tok, [])
  assert stop.empty and not stop and stop.num_states == 1 and stop.strings == ()
  assert not _hits(stop, tok.encode("anything\n\n")[None]).any()
  assert StopStrings(tok, ["x"]) and not StopStrings(tok, ["x"]).empty


def test_table_shapes():
  tok = tokenizers.ByteTokenizer()
  stop = StopStrings(tok, ["ab", "ac", "b"])  # prefixes "", a, ab, ac, b
  assert stop.num_states == 5
  assert stop.next_state_sv.shape == stop.hits_sv.shape == (5, 263)
  assert stop.next_state_sv.dtype == np.int32 and stop.hits_sv.dtype == bool
  assert (stop.next_state_sv[:, :7] == np.arange(5)[:, None]).all()  # specials keep the state
  assert not stop.hits_sv[:, :7].any()


# Host side.

@pytest.mark.parametrize("text, strings, want", [
    ("Hello\n\nWorld", ["\n\n"], ("Hello", True)),
    ("no stop here", ["\n\n", "###"], ("no stop here", False)),
    ("xabcde", ["cd", "abcde"], ("x", True)),    # the earliest start, not the earliest end
    ("a ### b\n\nc", ["\n\n", "###"], ("a ", True)),
    ("###", ["###"], ("", True)),
    ("café é", ["é"], ("caf", True)),
    ("anything", [], ("anything", False)),
    ("", ["x"], ("", False)),
])
def test_truncate(text, strings, want):
  assert stop_strings.truncate(text, strings) == want
  assert StopStrings(tokenizers.ByteTokenizer(), strings).truncate(text) == want


def test_invalid_stop_strings():
  tok = tokenizers.ByteTokenizer()
  with pytest.raises(InputError, match="stop string 1 is empty"):
    StopStrings(tok, ["###", ""])
  with pytest.raises(InputError, match="stop string 0 is 42 of type int"):
    StopStrings(tok, [42])
  with pytest.raises(InputError, match="of type bytes, expected str"):
    stop_strings.truncate("text", [b"x"])
  with pytest.raises(InputError, match=r"not one str.*\['###'\]"):
    StopStrings(tok, "###")
  with pytest.raises(InputError, match="empty"):
    stop_strings.truncate("text", [""])
