"""Hugging Face `tokenizer.json` files, both ways: read one as a pretrax tokenizer, and write
pretrax's tokenizers as files `transformers.AutoTokenizer.from_pretrained` loads.

Reading (`HuggingFaceTokenizer`, kind "huggingface"): GPT-2's byte-level BPE, BERT's WordPiece,
SentencePiece-style models (Metaspace "▁" and <0xNN> byte fallback) and others, through the
`tokenizers` library. The special ids are the file's own (GPT-2: bos = eos = <|endoftext|>).

  tok = HuggingFaceTokenizer("gpt2_dir")              # gpt2_dir/tokenizer.json (+ configs)
  tok.save("/tmp/run")                                # -> /tmp/run/hf_tokenizer/tokenizer.json

Writing (`hf_tokenizer_files`): the byte tokenizer becomes a byte-level BPE without merges (byte
b at id 7 + b), a pretrax SentencePiece model a Unigram or BPE model with byte fallback and no
dummy prefix. Ids equal pretrax's `encode`; the tokenizer adds the specials pretrax models are
trained with ("<s> text" for GPT), and "<s>" or "[MASK]" in a text stay text.
"""

import hashlib
import json
import os

import numpy as np
import tokenizers as hf_lib

from pretrax.data import files
from pretrax.data.errors import InputError
from pretrax.data.tokenizers import HF_DIRNAME, SPECIAL_TOKENS, Tokenizer

TOKENIZER_JSON = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
ROLES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
# Names a role's token goes by when no tokenizer_config.json / special_tokens_map.json says.
USUAL_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"), "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<s>", "<|endoftext|>", "<|begin_of_text|>", "<bos>"),
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"),
    "cls": ("[CLS]", "<cls>"), "sep": ("[SEP]", "<sep>"), "mask": ("[MASK]", "<mask>"),
}
_META = "\u2581"  # SentencePiece's "▁", a space


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte-level alphabet: byte -> the printable character that stands for it."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _types(component: dict | None) -> list[dict]:
  """A normalizer / pre-tokenizer / decoder JSON -> itself and its Sequence members."""
  if not component:
    return []
  members = component.get("decoders") or component.get("pretokenizers") or \
      component.get("normalizers")
  return [component] + [m for member in members or [] for m in _types(member)]


def _decoding_style(spec: dict) -> str:
  """How a tokenizer.json's tokens spell text: wordpiece | byte_level | sentencepiece | text."""
  decoders = _types(spec.get("decoder"))
  pre = [p.get("type") for p in _types(spec.get("pre_tokenizer"))]
  if (spec.get("model") or {}).get("type") == "WordPiece":
    return "wordpiece"
  if "ByteLevel" in pre or any(d.get("type") == "ByteLevel" for d in decoders):
    return "byte_level"
  if "Metaspace" in pre or any(d.get("type") == "Metaspace" or (
      d.get("type") == "Replace" and d.get("content") == " ") for d in decoders):
    return "sentencepiece"  # "▁" decodes as a space (Llama's decoder replaces it)
  return "text"


class HuggingFaceTokenizer(Tokenizer):
  """A `tokenizer.json` (and tokenizer_config.json / special_tokens_map.json next to it).

  `encode` = the file's encoding without added specials; a special token's text ("[MASK]",
  "<|endoftext|>") in the text stays text (`encode_special_tokens`), as in pretrax's other
  tokenizers. Unlike those, `encode` can emit the unknown token (WordPiece's [UNK] for a word it
  cannot spell); it is special, so it stands for 0 bytes and is never masked.

  Roles (pad, unk, bos, eos, cls, sep, mask): named by tokenizer_config.json or
  special_tokens_map.json, else the added token with a usual name (USUAL_NAMES). A missing pad
  is -1 (batches pad with id 0 under segment id 0, and samplers take -1 as "no padding id"); any
  other missing role raises an InputError naming it when a task asks for it.

  Bytes per id (`token_byte_lengths`, `token_bytes`), by the file's decoder:
    byte-level (GPT-2): the bytes the id's characters stand for; exact, they sum to the text's
      UTF-8 bytes.
    SentencePiece-style ("▁" pieces): "▁" is a space, <0xNN> one byte; exact, plus one for a
      dummy prefix (`adds_dummy_prefix`; Metaspace adds it to a text not starting with a space).
    WordPiece: a "##" piece counts its bytes without "##"; any other piece starts a word and
      counts one space before it. So a text counts as its words (as the normalizer and
      pre-tokenizer give them: "Hello, world" -> hello , world) each after one space:
      len(" hello , world") = 14 bytes (`adds_dummy_prefix` is True).
    otherwise: the token's text.
  Special tokens and ids the file leaves unused count 0 bytes.
  """

  kind = "huggingface"

  def __init__(self, path: str):
    self.path = os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path
    if not os.path.isfile(self.path):
      raise InputError(f"no Hugging Face tokenizer at {path!r}: expected a tokenizer.json file "
                       "or a folder holding one")
    with open(self.path, "rb") as f:
      self._json_bytes = f.read()
    try:
      self._tok = hf_lib.Tokenizer.from_str(self._json_bytes.decode("utf-8"))
      spec = json.loads(self._json_bytes)
    except Exception as e:  # the Rust parser raises a plain Exception
      raise InputError(f"{self.path} is not a valid Hugging Face tokenizer.json: {e}") from None
    self._tok.encode_special_tokens = True
    self._configs = {}
    for name in CONFIG_FILES:
      config_path = os.path.join(os.path.dirname(self.path), name)
      if os.path.isfile(config_path):
        with open(config_path, "rb") as f:
          self._configs[name] = f.read()

    vocab = self._tok.get_vocab(with_added_tokens=True)
    if not vocab:
      raise InputError(f"{self.path}: the tokenizer has an empty vocabulary")
    self.vocab_size = max(vocab.values()) + 1
    added = self._tok.get_added_tokens_decoder()  # {id: AddedToken}
    self._roles = self._find_roles(added)

    model = spec.get("model") or {}
    self.style = _decoding_style(spec)
    self._byte_fallback = bool(model.get("byte_fallback"))
    self._continuation = model.get("continuing_subword_prefix") or "##"

    table = [b""] * self.vocab_size
    known = np.zeros(self.vocab_size, bool)
    self._leading_space_v = np.zeros(self.vocab_size, bool)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for token, i in vocab.items():
      known[i] = True
      if i in added:
        if not added[i].special:
          table[i] = added[i].content.encode("utf-8")
          self._leading_space_v[i] = table[i].startswith(b" ")
        continue
      table[i], self._leading_space_v[i] = self._piece_bytes(token, byte_of)
    self._special_v = ~known  # ids the file leaves unused, and the special added tokens
    self._special_v[[i for i, t in added.items() if t.special]] = True
    self.special_ids = frozenset(np.flatnonzero(self._special_v).tolist())
    self._token_bytes_cache = tuple(table)
    self._byte_lengths_v = np.array([len(b) for b in table], np.int32)
    self._whitespace_v = np.array(
        [bool(b) and b.decode("utf-8", errors="replace").isspace() for b in table], bool)
    self.adds_dummy_prefix = bool(self._byte_lengths_v[self.encode("a")].sum() == 2)

  def __setstate__(self, state: dict):
    # Unpickled in a worker process (row_store builds with spawn): `tokenizers` pickles the file,
    # which does not hold encode_special_tokens.
    self.__dict__.update(state)
    self._tok.encode_special_tokens = True

  def _piece_bytes(self, token: str, byte_of: dict[str, int]) -> tuple[bytes, bool]:
    """A vocabulary token -> (the bytes it stands for after other text, starts a word)."""
    if self.style == "byte_level":
      if all(c in byte_of for c in token):
        data = bytes(byte_of[c] for c in token)
      else:
        data = token.encode("utf-8")
      return data, data.startswith(b" ")
    if self.style == "sentencepiece":
      if self._byte_fallback and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
          return bytes([int(token[3:5], 16)]), False
        except ValueError:
          pass
      return token.replace(_META, " ").encode("utf-8"), token.startswith(_META)
    if self.style == "wordpiece":
      if token.startswith(self._continuation):
        return token[len(self._continuation):].encode("utf-8"), False
      return b" " + token.encode("utf-8"), True
    return token.encode("utf-8"), token.startswith(" ")

  def _find_roles(self, added: dict) -> dict[str, int | None]:
    """role -> id (or None): from the config files, else by USUAL_NAMES among added tokens."""
    named = {}
    for name in CONFIG_FILES:  # tokenizer_config.json first
      if name not in self._configs:
        continue
      try:
        config = json.loads(self._configs[name])
      except ValueError as e:
        raise InputError(f"{os.path.join(os.path.dirname(self.path), name)} is not valid "
                         f"JSON: {e}") from None
      for role in ROLES:
        if not isinstance(config, dict) or f"{role}_token" not in config or role in named:
          continue
        value = config[f"{role}_token"]  # "<s>", {"content": "<s>", ...} or null: none
        named[role] = value.get("content") if isinstance(value, dict) else value
    by_content = {t.content: i for i, t in added.items()}
    roles = {}
    for role in ROLES:
      if role in named:
        roles[role] = None if named[role] is None else self._tok.token_to_id(str(named[role]))
        if roles[role] is None and named[role] is not None:
          raise InputError(f"{os.path.dirname(self.path)}: the {role}_token {named[role]!r} "
                           f"its config names is not in {self.path}")
      else:
        roles[role] = next((by_content[n] for n in USUAL_NAMES[role] if n in by_content), None)
    return roles

  def _role(self, role: str) -> int:
    if self._roles[role] is None:
      raise InputError(
          f"this needs the tokenizer's {role} token, and the Hugging Face tokenizer {self.path} "
          f"has none (no {role}_token in {' / '.join(CONFIG_FILES)}, and no added token named "
          f"{' or '.join(USUAL_NAMES[role])}): use a tokenizer that has one")
    return self._roles[role]

  pad_id = property(lambda self: -1 if self._roles["pad"] is None else self._roles["pad"])
  unk_id = property(lambda self: self._role("unk"))
  bos_id = property(lambda self: self._role("bos"))
  eos_id = property(lambda self: self._role("eos"))
  cls_id = property(lambda self: self._role("cls"))
  sep_id = property(lambda self: self._role("sep"))
  mask_id = property(lambda self: self._role("mask"))

  def special_token_ids(self) -> dict[str, int | None]:
    return dict(self._roles)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def _decode_valid(self, ids: np.ndarray) -> str:
    return self._tok.decode(ids.tolist(), skip_special_tokens=False)

  def _build_token_bytes(self) -> list[bytes]:
    return list(self._token_bytes_cache)

  def files(self) -> dict[str, bytes]:
    """{file name: content}: tokenizer.json and the config files it was read with."""
    return {TOKENIZER_JSON: self._json_bytes, **self._configs}

  def save(self, directory: str) -> str:
    target = os.path.join(directory, HF_DIRNAME)
    os.makedirs(target, exist_ok=True)
    for name, content in self.files().items():
      files.atomic_write(os.path.join(target, name), content)
    return os.path.join(target, TOKENIZER_JSON)

  def describe(self) -> dict:
    digest = hashlib.sha256()
    for name, content in sorted(self.files().items()):
      digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return {"kind": self.kind, "vocab_size": self.vocab_size, "special_tokens": self._roles,
            "adds_dummy_prefix": self.adds_dummy_prefix, "style": self.style,
            "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------------------------
# Writing pretrax tokenizers as Hugging Face files.

TEMPLATES = {  # what the exported tokenizer adds, as pretrax trains each family
    "gpt": ("<s> $A", "<s> $A <s> $B"),
    "bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
    "encoder_decoder": ("$A </s>", "$A </s> $B </s>"),
}
_UNREACHABLE = -1e6  # Unigram score of control and byte pieces, which SentencePiece never
                     # matches in text (see _sentencepiece_model)


def _sentencepiece_model_type(model_proto: bytes) -> int:
  """ModelProto.trainer_spec.model_type (1 unigram, 2 bpe), read from the wire format."""
  def fields(data: bytes):
    i = 0
    while i < len(data):
      key, i = _varint(data, i)
      number, wire = key >> 3, key & 7
      if wire == 0:
        value, i = _varint(data, i)
      elif wire == 2:
        size, i = _varint(data, i)
        value, i = data[i:i + size], i + size
      elif wire in (1, 5):
        value, i = None, i + (8 if wire == 1 else 4)
      else:
        raise InputError(f"unexpected protobuf wire type {wire} in a SentencePiece model")
      yield number, value
  for number, value in fields(model_proto):
    if number == 2:  # trainer_spec
      return next((v for n, v in fields(value) if n == 3), 1)  # model_type, default UNIGRAM
  return 1


def _varint(data: bytes, i: int) -> tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[i]
    value |= (byte & 0x7F) << shift
    i, shift = i + 1, shift + 7
    if not byte & 0x80:
      return value, i


def _byte_model(tok) -> hf_lib.Tokenizer:
  alphabet = bytes_to_unicode()
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  vocab.update({alphabet[b]: tok.byte_offset + b for b in range(256)})
  out = hf_lib.Tokenizer(hf_lib.models.BPE(vocab=vocab, merges=[]))
  out.pre_tokenizer = hf_lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  out.decoder = hf_lib.decoders.ByteLevel()
  return out


def _sentencepiece_model(tok) -> hf_lib.Tokenizer:
  sp = tok._sp
  v = tok.vocab_size
  normal = [not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))
            for i in range(v)]
  pieces = [sp.id_to_piece(i) for i in range(v)]
  if _sentencepiece_model_type(tok._model_proto) == 2:
    # SentencePiece BPE merges the pair whose piece scores highest: merges ranked by that score.
    ids = {p: i for i, p in enumerate(pieces) if normal[i]}
    merges = []
    for i in sorted(range(v), key=lambda i: (-sp.get_score(i), i)):
      if normal[i] and len(pieces[i]) > 1:
        merges += [(pieces[i][:k], pieces[i][k:]) for k in range(1, len(pieces[i]))
                   if pieces[i][:k] in ids and pieces[i][k:] in ids]
    model = hf_lib.models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges,
                              unk_token=SPECIAL_TOKENS[tok.unk_id], byte_fallback=True)
  else:
    scores = [(p, sp.get_score(i) if normal[i] else _UNREACHABLE) for i, p in enumerate(pieces)]
    model = hf_lib.models.Unigram(scores, unk_id=tok.unk_id, byte_fallback=True)
  out = hf_lib.Tokenizer(model)
  # Identity normalization and no dummy prefix, as pretrax trains: only " " becomes "▁".
  pre = [hf_lib.pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="never", split=False)]
  if not isinstance(model, hf_lib.models.BPE):
    # `tokenizers` matches control and byte pieces ("<s>", "<0x41>") in text, which
    # SentencePiece never does. Their low score loses to every other spelling except one through
    # a character no piece holds (its unknown node scores below all). Cutting the text around
    # such a character changes no SentencePiece segmentation (no piece spans it) and leaves a
    # control piece nothing to match.
    reserved = {c for i, p in enumerate(pieces) if not normal[i] for c in p}
    known = {c for i, p in enumerate(pieces) if normal[i] for c in p}
    cut = sorted(reserved - known)
    if cut:
      pattern = hf_lib.Regex("[" + "".join(f"\\x{{{ord(c):X}}}" for c in cut) + "]")
      pre.append(hf_lib.pre_tokenizers.Split(pattern, behavior="isolated"))
  out.pre_tokenizer = pre[0] if len(pre) == 1 else hf_lib.pre_tokenizers.Sequence(pre)
  out.decoder = hf_lib.decoders.Sequence([hf_lib.decoders.Replace(_META, " "),
                                          hf_lib.decoders.ByteFallback(),
                                          hf_lib.decoders.Fuse()])
  return out


def hf_tokenizer_files(tok: Tokenizer, family: str = "gpt",
                       max_length: int | None = None) -> dict[str, bytes]:
  """A pretrax tokenizer -> {file name: content} for a folder `AutoTokenizer` loads.

  Byte and SentencePiece tokenizers: tokenizer.json, tokenizer_config.json and
  special_tokens_map.json with pad/unk/bos/eos/cls/sep/mask = <pad>=0 <unk>=1 <s>=2 </s>=3 [CLS]=4
  [SEP]=5 [MASK]=6; `tok(text)` adds what the `family` is trained with (TEMPLATES: BOS first for
  GPT), `tok.encode(text, add_special_tokens=False)` equals pretrax's `encode(text)`, and a
  special token's text in a text stays text (split_special_tokens). One known difference: where
  two orders of the same Unigram pieces score exactly alike ("▁" + "▁▁▁" or "▁▁▁" + "▁" in a run
  of spaces), SentencePiece's float32 sums and `tokenizers`' float64 ones may pick different
  orders (1 in 3,300 random texts in a test). A Hugging Face tokenizer: its own files (a
  tokenizer_config.json naming its roles added if it had none).
  """
  if isinstance(tok, HuggingFaceTokenizer):
    out = tok.files()
    if CONFIG_FILES[0] not in out:
      config = {"tokenizer_class": "PreTrainedTokenizerFast",
                **{f"{r}_token": tok._tok.id_to_token(i) for r, i in tok._roles.items()
                   if i is not None}}
      out[CONFIG_FILES[0]] = (json.dumps(config, indent=2) + "\n").encode()
    return out
  if tok.kind == "byte":
    model = _byte_model(tok)
  elif tok.kind == "sentencepiece":
    model = _sentencepiece_model(tok)
  else:
    raise InputError(f"cannot write a {tok.kind} tokenizer as a Hugging Face tokenizer.json")
  model.add_special_tokens([hf_lib.AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
  single, pair = TEMPLATES[family]
  used = [t for t in SPECIAL_TOKENS if t in single]
  model.post_processor = hf_lib.processors.TemplateProcessing(
      single=single, pair=pair, special_tokens=[(t, SPECIAL_TOKENS.index(t)) for t in used])
  roles = dict(zip(ROLES, SPECIAL_TOKENS))
  special_map = {f"{role}_token": token for role, token in roles.items()}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **special_map,
            "split_special_tokens": True,          # "<s>" in a text is text, as pretrax encodes it
            "clean_up_tokenization_spaces": False,  # decode gives the text back
            "model_max_length": max_length or int(1e30)}
  dump = lambda d: (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
  return {TOKENIZER_JSON: model.to_str(pretty=True).encode("utf-8"),
          CONFIG_FILES[0]: dump(config), CONFIG_FILES[1]: dump(special_map)}


def write_hf_tokenizer(tok: Tokenizer, directory: str, family: str = "gpt",
                       max_length: int | None = None) -> list[str]:
  """Writes `hf_tokenizer_files` into `directory`; returns the file names."""
  os.makedirs(directory, exist_ok=True)
  written = hf_tokenizer_files(tok, family, max_length)
  for name, content in written.items():
    files.atomic_write(os.path.join(directory, name), content)
  return sorted(written)
