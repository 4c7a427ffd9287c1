"""Tokenizers: UTF-8 bytes, a SentencePiece model or a Hugging Face tokenizer.json, behind one
interface. Code asks the tokenizer for its special ids (tok.bos_id, tok.special_ids), never
assumes them.

pretrax's own tokenizers put the same seven special tokens at ids 0..6:

  <pad>=0  <unk>=1  <s>=2  </s>=3  [CLS]=4  [SEP]=5  [MASK]=6

`encode` never emits a special id: "[MASK]" in the text is ordinary text in both tokenizers. A
Hugging Face tokenizer (data/hf_tokenizer.py, an imported model's own) keeps its file's ids.

  tok = load_tokenizer("byte")                        # 263 ids, no training
  tok = train_sentencepiece(docs, "/tmp/run/spm", vocab_size=8_000)
  tok.save("/tmp/run")                                # -> /tmp/run/tokenizer.model
  tok = load_from_directory("/tmp/run")
  tok = load_tokenizer("gpt2_dir/tokenizer.json")     # or the folder; saved as hf_tokenizer/
"""

import abc
import hashlib
import io
import itertools
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np
import sentencepiece

from pretrax.data.errors import InputError
from pretrax.data import files

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]")  # ids 0..6
PAD_ID, UNK_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

MODEL_FILENAME = "tokenizer.model"  # a SentencePiece model proto, copied byte for byte
JSON_FILENAME = "tokenizer.json"    # the byte tokenizer's description
HF_DIRNAME = "hf_tokenizer"         # a Hugging Face tokenizer.json and its configs (hf_tokenizer.py)
MODEL_TYPES = ("unigram", "bpe")

_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"
_MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length: longer sentences are dropped
_TRAIN_THREADS = 16         # SentencePiece shards sentences by thread: a fixed count keeps training
                            # deterministic across machines (16 is its default)


class Tokenizer(abc.ABC):
  """Text <-> int32 ids. Subclasses fill the per-id tables [V] in `__init__`."""

  kind: str        # "byte" | "sentencepiece" | "huggingface"
  vocab_size: int  # V: ids are in [0, V)
  pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
  cls_id, sep_id, mask_id = CLS_ID, SEP_ID, MASK_ID
  special_ids = frozenset(range(len(SPECIAL_TOKENS)))
  adds_dummy_prefix = False  # True if encode(text) stands for " " + text (SentencePiece's default;
                             # pretrax trains without it)

  _byte_lengths_v: np.ndarray  # [V] int32 UTF-8 bytes of text each id stands for
  _whitespace_v: np.ndarray    # [V] bool, the id's text is all whitespace
  _leading_space_v: np.ndarray  # [V] bool, the id's text starts with a word-separating space ("▁")
  _special_v: np.ndarray       # [V] bool

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """str -> [N] int32 ids, without BOS/EOS and never a special id."""

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    """[str] -> one [N_i] int32 array each, as `encode`."""
    return [self.encode(text) for text in texts]

  def encode_joined(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[str] -> (the ids of each, as `encode`, one after another [sum N_i] int32; [len] N_i
    int64): `encode_batch` without an array per text."""
    ids = self.encode_batch(texts)
    lengths = np.array([len(i) for i in ids], np.int64)
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), lengths

  @abc.abstractmethod
  def _decode_valid(self, ids: np.ndarray) -> str:
    """[N] int32 non-special ids, all in range -> str."""

  @abc.abstractmethod
  def save(self, directory: str) -> str:
    """Writes the tokenizer into `directory` (created if needed); returns the file written."""

  def decode(self, ids) -> str:
    """[N] ints -> str. Special ids are skipped; invalid UTF-8 becomes U+FFFD."""
    ids = self._check_ids(ids)
    return self._decode_valid(ids[~self._special_v[ids]])

  def token_byte_lengths(self) -> np.ndarray:
    """[V] int32: UTF-8 bytes of text each id stands for (0 for specials), for bits-per-byte.

    Summed over encode(text) this is len(text.encode()), plus 1 for a non-empty text when
    `adds_dummy_prefix` (the prefix space counts as a byte of text).
    """
    return self._byte_lengths_v.copy()

  _token_bytes_cache: tuple[bytes, ...] | None = None  # token_bytes(), built on first use

  def token_bytes(self) -> list[bytes]:
    """[V] bytes: the UTF-8 text each id stands for where it follows other text (for matching
    text on ids, e.g. stop strings). b"" for specials and for control, unknown and unused pieces;
    a byte piece "<0x0A>" is that one byte; other pieces with "▁" as a space.

    len(token_bytes()[i]) == token_byte_lengths()[i], and b"".join of it over encode(text) is
    text.encode(), with a leading space when `adds_dummy_prefix` (and, as `decode` gives it, a
    space for a literal "▁" in the text of a SentencePiece model). Built once, then cached.
    """
    if self._token_bytes_cache is None:
      self._token_bytes_cache = tuple(self._build_token_bytes())
    return list(self._token_bytes_cache)

  @abc.abstractmethod
  def _build_token_bytes(self) -> list[bytes]:
    """The table `token_bytes` returns."""

  def word_starts(self, ids) -> np.ndarray:
    """[N] ints -> [N] bool, True where a token begins a word (for whole-word masking).

    A word runs from a start to the token before the next start or special token. A token that is
    not whitespace starts a word if it starts with a space piece ("▁", as SentencePiece marks
    words) or follows a whitespace token (a space byte, a newline byte piece); whitespace after a
    word belongs to that word. The first token after the beginning or after a special token
    always starts a word, and whitespace there joins the word that follows it, so every
    non-special token belongs to exactly one word. Special tokens are never starts. Whitespace:
    ASCII whitespace bytes (byte tokenizer, SentencePiece's byte pieces); pieces whose text
    `str.isspace()`.
    """
    ids = self._check_ids(ids)
    special = self._special_v[ids]
    white = self._whitespace_v[ids]
    word = ~special & ~white
    prev_special = np.ones_like(special)
    prev_special[1:] = special[:-1]
    prev_white = np.zeros_like(white)
    prev_white[1:] = white[:-1]
    words_through = np.cumsum(word)                # non-whitespace tokens in ids[:i + 1]
    at_last_special = np.maximum.accumulate(np.where(special, words_through, 0))
    seen_word = words_through - word > at_last_special  # a word token since the last special
    later_start = word & (self._leading_space_v[ids] | prev_white)
    return ~special & np.where(seen_word, later_start, prev_special)

  def special_token_ids(self) -> dict[str, int | None]:
    """role -> id: pad, unk, bos, eos, cls, sep, mask (None where the tokenizer has none)."""
    return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id,
            "cls": self.cls_id, "sep": self.sep_id, "mask": self.mask_id}

  def describe(self) -> dict:
    """JSON-able summary for logs and exports."""
    return {
        "kind": self.kind,
        "vocab_size": self.vocab_size,
        "special_tokens": dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)))),
        "adds_dummy_prefix": self.adds_dummy_prefix,
    }

  def _check_ids(self, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
      raise InputError(f"expected a 1-D sequence of int ids, got shape {ids.shape} dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= self.vocab_size)]
    if bad.size:
      raise InputError(f"id {int(bad[0])} is outside this {self.kind} tokenizer's vocabulary "
                       f"[0, {self.vocab_size})")
    return ids


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes: byte b is id 7 + b; ids 0..6 are the specials. V = 263."""

  kind = "byte"
  byte_offset = len(SPECIAL_TOKENS)

  def __init__(self):
    self.vocab_size = self.byte_offset + 256
    num_special = self.byte_offset
    self._special_v = np.arange(self.vocab_size) < num_special
    self._byte_lengths_v = np.where(self._special_v, 0, 1).astype(np.int32)
    self._whitespace_v = np.zeros(self.vocab_size, bool)
    self._whitespace_v[num_special + np.frombuffer(_ASCII_WHITESPACE, np.uint8)] = True
    self._leading_space_v = np.zeros(self.vocab_size, bool)

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.byte_offset

  def encode_joined(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.encode("utf-8") for t in texts]
    ids = np.frombuffer(b"".join(encoded), np.uint8).astype(np.int32) + self.byte_offset
    return ids, np.array([len(e) for e in encoded], np.int64)

  def _decode_valid(self, ids: np.ndarray) -> str:
    return (ids - self.byte_offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def _build_token_bytes(self) -> list[bytes]:
    return [b""] * self.byte_offset + [bytes([b]) for b in range(256)]

  def save(self, directory: str) -> str:
    description = {
        "kind": self.kind,
        "vocab_size": self.vocab_size,
        "special_tokens": dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)))),
        "byte_offset": self.byte_offset,
    }
    path = os.path.join(directory, JSON_FILENAME)
    files.atomic_write_json(path, description)
    return path


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model whose ids 0..6 are the pretrax specials (see `train_sentencepiece`)."""

  kind = "sentencepiece"

  def __init__(self, model_path: str):
    self.model_path = model_path
    if not os.path.isfile(model_path):
      raise InputError(f"SentencePiece model {model_path!r} does not exist")
    with open(model_path, "rb") as f:
      self._model_proto = f.read()
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=self._model_proto)
    except RuntimeError as e:
      raise InputError(f"{model_path!r} is not a SentencePiece model: {e}") from None
    self.vocab_size = self._sp.get_piece_size()
    self._check_specials()

    sp, v = self._sp, self.vocab_size
    self._special_v = np.arange(v) < len(SPECIAL_TOKENS)
    self._byte_lengths_v = np.zeros(v, np.int32)
    self._whitespace_v = np.zeros(v, bool)
    self._leading_space_v = np.zeros(v, bool)
    for i in range(len(SPECIAL_TOKENS), v):
      piece = sp.id_to_piece(i)
      if sp.is_byte(i):  # "<0x0A>"
        # Whitespace only if ASCII, as in ByteTokenizer: 0xA0 is a piece of "à" (C3 A0), no space.
        byte = bytes([int(piece[1:-1], 16)])
        text = byte.decode() if byte in _ASCII_WHITESPACE else "x"
        self._byte_lengths_v[i] = 1
      elif sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        continue
      else:
        text = piece.replace("\u2581", " ")
        self._byte_lengths_v[i] = len(text.encode("utf-8"))
        self._leading_space_v[i] = piece.startswith("\u2581")
      self._whitespace_v[i] = text.isspace()
    # "a" has one byte; a dummy prefix space makes its tokens stand for two.
    self.adds_dummy_prefix = bool(self._byte_lengths_v[self.encode("a")].sum() == 2)

  def _check_specials(self):
    sp = self._sp
    found = [sp.id_to_piece(i) for i in range(min(len(SPECIAL_TOKENS), self.vocab_size))]
    wrong = [f"id {i} is {got!r} (expected {want!r})"
             for i, (got, want) in enumerate(itertools.zip_longest(found, SPECIAL_TOKENS))
             if got != want]
    roles = {"pad_id": (sp.pad_id(), PAD_ID), "unk_id": (sp.unk_id(), UNK_ID),
             "bos_id": (sp.bos_id(), BOS_ID), "eos_id": (sp.eos_id(), EOS_ID)}
    wrong += [f"the model's {name} is {got} (expected {want})"
              for name, (got, want) in roles.items() if got != want]
    if wrong:
      raise InputError(
          f"SentencePiece model {self.model_path!r} does not use pretrax's special-token ids "
          f"({', '.join(f'{t}={i}' for i, t in enumerate(SPECIAL_TOKENS))}): {'; '.join(wrong)}. "
          "Train it with pretrax.data.tokenizers.train_sentencepiece.")

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32).reshape(-1)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    # One thread: a packed-rows build already runs a process per core.
    return [np.asarray(ids, np.int32).reshape(-1)
            for ids in self._sp.encode(list(texts), num_threads=1)]

  def encode_joined(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lists = self._sp.encode(list(texts), num_threads=1)
    lengths = np.array([len(i) for i in lists], np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(lists), np.int32, count=int(lengths.sum()))
    return ids, lengths

  def _decode_valid(self, ids: np.ndarray) -> str:
    return self._sp.decode(ids.tolist())

  def _build_token_bytes(self) -> list[bytes]:
    # The same cases, in the same order, as the per-id tables in __init__.
    sp, table = self._sp, [b""] * self.vocab_size
    for i in range(len(SPECIAL_TOKENS), self.vocab_size):
      piece = sp.id_to_piece(i)
      if sp.is_byte(i):
        table[i] = bytes([int(piece[1:-1], 16)])
      elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
        table[i] = piece.replace("\u2581", " ").encode("utf-8")
    return table

  def save(self, directory: str) -> str:
    path = os.path.join(directory, MODEL_FILENAME)
    files.atomic_write(path, self._model_proto)
    return path

  def describe(self) -> dict:
    return {**super().describe(), "sha256": hashlib.sha256(self._model_proto).hexdigest()}


def load_tokenizer(spec: str) -> Tokenizer:
  """Config's `data.tokenizer` -> Tokenizer. spec: "byte" | PATH to a SentencePiece .model |
  PATH to a Hugging Face tokenizer.json, or a folder holding one (its tokenizer_config.json /
  special_tokens_map.json next to it name the special tokens)."""
  if spec == "byte":
    return ByteTokenizer()
  if spec == "train":
    raise InputError("tokenizer='train' needs a corpus: train one with train_sentencepiece(...) "
                     "and load the .model it writes")
  if os.path.isdir(spec) or spec.endswith(".json"):
    from pretrax.data import hf_tokenizer  # it subclasses Tokenizer
    return hf_tokenizer.HuggingFaceTokenizer(spec)
  if not os.path.isfile(spec):
    raise InputError(f"tokenizer {spec!r}: no such file; valid values: byte | PATH.model | "
                     "PATH/tokenizer.json (Hugging Face) | train")
  return SentencePieceTokenizer(spec)


def saved_spec(tokenizer: Tokenizer, directory: str) -> str:
  """The `data.tokenizer` value naming the copy `tokenizer.save(directory)` writes."""
  if tokenizer.kind == "byte":
    return "byte"
  name = HF_DIRNAME if tokenizer.kind == "huggingface" else MODEL_FILENAME
  return os.path.abspath(os.path.join(directory, name))


def load_from_directory(directory: str) -> Tokenizer:
  """Reads the tokenizer that `Tokenizer.save` wrote into a run directory: tokenizer.model
  (SentencePiece), tokenizer.json (pretrax's byte tokenizer) or hf_tokenizer/ (Hugging Face)."""
  model_path = os.path.join(directory, MODEL_FILENAME)
  json_path = os.path.join(directory, JSON_FILENAME)
  hf_path = os.path.join(directory, HF_DIRNAME)
  found = [name for name, path in ((MODEL_FILENAME, model_path), (JSON_FILENAME, json_path),
                                   (HF_DIRNAME, hf_path)) if os.path.exists(path)]
  if len(found) > 1:
    raise InputError(f"{directory!r} holds {' and '.join(found)}; delete the one(s) that do not "
                     "belong to this run")
  if found == [MODEL_FILENAME]:
    return SentencePieceTokenizer(model_path)
  if found == [HF_DIRNAME]:
    from pretrax.data import hf_tokenizer
    return hf_tokenizer.HuggingFaceTokenizer(hf_path)
  if not found:
    raise InputError(f"{directory!r} holds no tokenizer: expected {MODEL_FILENAME}, "
                     f"{JSON_FILENAME} or {HF_DIRNAME}/")
  try:
    with open(json_path) as f:
      description = json.load(f)
  except json.JSONDecodeError as e:
    raise InputError(f"{json_path!r} is not valid JSON: {e}") from None
  tokenizer = ByteTokenizer()
  expected = {
      "kind": tokenizer.kind,
      "vocab_size": tokenizer.vocab_size,
      "special_tokens": dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)))),
      "byte_offset": tokenizer.byte_offset,
  }
  for key, want in expected.items():
    got = description.get(key) if isinstance(description, dict) else None
    if got != want:
      raise InputError(f"{json_path!r}: field {key!r} is {got!r}, expected {want!r} "
                       "(the tokenizer.json of a run directory is the byte tokenizer's; a "
                       f"Hugging Face tokenizer.json belongs in {HF_DIRNAME}/)")
  return tokenizer


def train_sentencepiece(texts: Iterable[str], output_prefix: str, *, vocab_size: int,
                        model_type: str = "unigram",
                        max_sentences: int = 2_000_000) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on documents; writes {output_prefix}.model and .vocab.

  Documents are split into lines (and lines longer than 4192 UTF-8 bytes into chunks at
  spaces); empty lines are skipped; training reads at most `max_sentences` of these from the
  start of `texts`, so pass a shuffled stream for a representative sample. Lossless: identity
  normalization, whitespace kept, no dummy prefix, bytes the vocabulary lacks fall back to
  <0xNN> pieces, so decode(encode(text)) == text and token bytes sum to len(text.encode()).
  Deterministic: the same texts and arguments give a byte-identical model.
  """
  if isinstance(texts, str):
    raise TypeError("texts must be an iterable of documents, not one str")
  if model_type not in MODEL_TYPES:
    raise InputError(f"model_type={model_type!r}; choose one of {' | '.join(MODEL_TYPES)}")
  if vocab_size <= len(SPECIAL_TOKENS):
    raise InputError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")

  errors = []  # an exception raised while reading texts; SentencePiece would wrap it in a RuntimeError
  def sentences() -> Iterator[str]:
    try:
      yield from itertools.islice(_sentences(texts), max_sentences)
    except Exception as e:
      errors.append(e)
      raise
  stream = sentences()
  first = next(stream, None)
  if first is None:
    raise InputError("empty corpus: texts hold no non-empty line to train a tokenizer on")

  writer = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], stream),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        # Control symbols (not user-defined ones): "[MASK]" in the text stays text.
        control_symbols=list(SPECIAL_TOKENS[CLS_ID:]),
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",  # keep the text as is: no NFKC
        remove_extra_whitespaces=False,       # keep runs of spaces (code indentation)
        # No "▁" before each text: training sees lines, and a line after "\n" in a document gets
        # none either; token bytes then sum to the text's bytes exactly (bits per byte).
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,    # let a run of spaces be one piece
        max_sentence_length=_MAX_SENTENCE_BYTES,
        num_threads=_TRAIN_THREADS,
        minloglevel=2,
    )
  except RuntimeError as e:
    if errors:
      raise errors[0] from None
    raise _training_error(str(e), vocab_size) from None

  model_path, vocab_path = output_prefix + ".model", output_prefix + ".vocab"
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  files.atomic_write(model_path, writer.getvalue())
  sp = sentencepiece.SentencePieceProcessor(model_proto=writer.getvalue())
  vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
  files.atomic_write(vocab_path, vocab.encode("utf-8"))
  return SentencePieceTokenizer(model_path)


def _sentences(texts: Iterable[str]) -> Iterator[str]:
  """Documents -> non-empty lines of at most _MAX_SENTENCE_BYTES UTF-8 bytes."""
  for index, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"document {index} is a {type(text).__name__}, expected str")
    for line in text.split("\n"):
      if line:
        yield from _split_line(line, _MAX_SENTENCE_BYTES)


def _split_line(line: str, max_bytes: int) -> Iterator[str]:
  """One line -> chunks of at most max_bytes UTF-8 bytes whose concatenation is the line.

  Cuts after the last space inside the limit, else at the last whole character.
  """
  data = line.encode("utf-8")
  while len(data) > max_bytes:
    cut = data.rfind(b" ", 0, max_bytes) + 1
    if cut == 0:
      cut = max_bytes
      while data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back up to the character start
        cut -= 1
    yield data[:cut].decode("utf-8")
    data = data[cut:]
  if data:
    yield data.decode("utf-8")


def _training_error(message: str, vocab_size: int) -> ValueError:
  """SentencePiece's RuntimeError -> a ValueError that says what to change."""
  too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
  if too_high:
    return InputError(f"the corpus is too small for vocab_size={vocab_size}: it yields at most "
                      f"{too_high.group(2)} pieces; use vocab_size <= {too_high.group(2)} "
                      "or train on more text")
  too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
  if too_low:
    return InputError(f"vocab_size={vocab_size} is too small for this corpus: it needs at least "
                      f"{too_low.group(2)} pieces ({len(SPECIAL_TOKENS)} specials, 256 byte pieces "
                      "and its characters)")
  return InputError(f"SentencePiece training failed (vocab_size={vocab_size}): {message}")
