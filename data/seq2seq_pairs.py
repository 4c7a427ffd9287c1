"""Supervised source -> target pairs (data.objective=seq2seq), packed several to a row.

  pairs = read_pairs("train.jsonl")     # [(source, target)]: {"source", "target"} lines, or tfds:
  rows = PackedPairs(pairs, tokenizer, s=128, t=128, name="train.jsonl")
  batches = GlobalBatches(rows, PairRows(s=128, bos_id=tok.bos_id), ...)

Each pair becomes encoder ids `source [eos]` and targets `target [eos]` (each truncated to fit
its side). Pairs are packed in file order: a row takes the next pair while both its encoder side
(S slots) and its decoder side (T slots) have room, and segment k of both sides is the row's
k-th pair. The model keeps packed pairs apart (attention masks by segment, positions restarting
at 0), and `PairRows` restarts the decoder inputs with the start token at each pair, so a packed
row computes what its pairs compute alone.

`PackedPairs` is read like a row store (data/row_store.py) by global row index
(data/global_batches.py): row r holds [S + T] ids, the encoder's then the targets, and as many
segment ids. It lives in memory: supervised sets of this kind are small (Multi30k: 29,000
pairs, 4 MB of text).
"""

import hashlib
import os

import numpy as np

from pretrax.data import classification, jsonl, packing
from pretrax.data.errors import InputError
from pretrax.data.row_store import Rows


def read_pairs(spec: str, field: str = "config.data.train", *, default_split: str = "train",
               data_dir: str | None = None, features: str = "") -> list[tuple[str, str]]:
  """(source, target) of each pair of a JSONL file (errors name PATH:LINE) or of
  `tfds:NAME[:SPLIT]` (`features` "SOURCE,TARGET" names the two text features; "": the
  dataset's supervised keys, e.g. ("pt", "en") for ted_hrlr_translate/pt_to_en)."""
  if spec.startswith("tfds:"):
    return _read_tfds_pairs(spec, field, default_split, data_dir, features)
  path = spec
  if not os.path.isfile(path):
    raise InputError(f"{field}={path!r}: no such file (expected a JSONL file with "
                     '{"source": ..., "target": ...} lines, or tfds:NAME[:SPLIT])')
  pairs = []
  for where, record in jsonl.read_objects(path, '"source" and "target"'):
    for name in ("source", "target"):
      if not isinstance(record.get(name), str):
        raise InputError(f"{where}: field {name!r} must be a string (each line needs "
                         "\"source\" and \"target\")")
    pairs.append((record["source"], record["target"]))
  if not pairs:
    raise InputError(f"{field}={path!r} holds no pairs")
  return pairs


def _read_tfds_pairs(spec: str, field: str, default_split: str, data_dir: str | None,
                     features: str) -> list[tuple[str, str]]:
  import tensorflow_datasets as tfds

  name, split = classification.parse_tfds(spec, default_split)
  try:
    records = tfds.data_source(name, split=split, data_dir=data_dir,
                               builder_kwargs={"file_format": "array_record"})
  except tfds.core.registered.DatasetNotFoundError:
    raise InputError(f"{field}={spec!r}: TFDS has no dataset {name!r}") from None
  names = sorted(records.dataset_info.features.keys())
  keys = tuple(f.strip() for f in features.split(",")) if features else (
      records.dataset_info.supervised_keys or ())
  if len(keys) != 2 or not set(keys) <= set(names):
    raise InputError(f"{field}={spec!r}: set config.data.pair_features=SOURCE,TARGET to two of "
                     f"its features {names} (got {features or 'no supervised keys'!r})")
  source, target = keys
  pairs = [(classification.text_of(r[source]), classification.text_of(r[target]))
           for r in (records[i] for i in range(len(records)))]
  if not pairs:
    raise InputError(f"{field}={spec!r}: split {split!r} holds no pairs")
  return pairs


def identity(spec: str) -> dict:
  """What a saved data position in the pairs of `spec` means something for: a file's name, size
  and content hash; a TFDS split's name."""
  if spec.startswith("tfds:"):
    return {"tfds": spec}
  with open(spec, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {"file": os.path.abspath(spec), "bytes": os.path.getsize(spec), "sha256": digest}


def ends_with_eos(ids: np.ndarray, room: int, eos_id: int) -> np.ndarray:
  """[N] ids -> their first room - 1 and `eos_id`, int32."""
  return np.concatenate([ids[:room - 1], [eos_id]]).astype(np.int32)


def encode_sources(tokenizer, texts: list[str], s: int) -> list[np.ndarray]:
  """Source texts -> encoder ids as pairs are trained on: `source [eos]`, at most `s` tokens."""
  return [ends_with_eos(ids, s, tokenizer.eos_id) for ids in tokenizer.encode_batch(texts)]


class PackedRowTable:
  """Rows packed in memory, read like a row store by row index: `tokens` and `segments`
  [N, W] int32 (`_keep` sets them), named by their content."""

  has_documents = False

  def _keep(self, tokens: np.ndarray, segments: np.ndarray, num_pairs: int, name: str,
            layout: str) -> None:
    self.tokens, self.segments, self.num_pairs = tokens, segments, num_pairs
    digest = hashlib.sha256(tokens.tobytes() + segments.tobytes()).hexdigest()[:16]
    self.name = f"{os.path.basename(name)}-{layout}-{digest}"

  def __len__(self) -> int:
    return len(self.tokens)

  def read(self, indices) -> Rows:
    indices = np.asarray(indices, np.int64)
    return Rows(self.tokens[indices], self.segments[indices], None)


class PackedPairs(PackedRowTable):
  """Tokenized pairs packed into rows of [S + T] slots (see module doc), read by row index."""

  def __init__(self, pairs: list[tuple[str, str]], tokenizer, *, s: int, t: int, name: str):
    if s < 2 or t < 2:
      raise InputError(f"data.seq_len={min(s, t)} leaves no room for a token and </s>")
    self.s, self.t, self.row_len = s, t, s + t
    sources = encode_sources(tokenizer, [p[0] for p in pairs], s)
    targets = encode_sources(tokenizer, [p[1] for p in pairs], t)
    self.truncated = sum(len(a) == s for a in sources) + sum(len(b) == t for b in targets)
    rows, row = [], []
    fill_s = fill_t = 0
    for a, b in zip(sources, targets):
      if row and (fill_s + len(a) > s or fill_t + len(b) > t):
        rows.append(row)
        row, fill_s, fill_t = [], 0, 0
      row.append((a, b))
      fill_s, fill_t = fill_s + len(a), fill_t + len(b)
    rows.append(row)
    tokens = np.zeros((len(rows), s + t), np.int32)
    segments = np.zeros((len(rows), s + t), np.int32)
    for r, row in enumerate(rows):
      fill_s = fill_t = 0
      for k, (a, b) in enumerate(row, start=1):
        tokens[r, fill_s:fill_s + len(a)] = a
        segments[r, fill_s:fill_s + len(a)] = k
        tokens[r, s + fill_t:s + fill_t + len(b)] = b
        segments[r, s + fill_t:s + fill_t + len(b)] = k
        fill_s, fill_t = fill_s + len(a), fill_t + len(b)
    self._keep(tokens, segments, len(pairs), name, f"pairs{s}+{t}")


class PairRows:
  """Packed pair rows -> encoder-decoder examples (a `global_batches.MakeExamples`), with the
  features of data/seq2seq_pipeline.py."""

  def __init__(self, *, s: int, bos_id: int):
    self.s, self.bos_id = s, bos_id

  def __call__(self, rows: Rows, stream_n: np.ndarray) -> dict[str, np.ndarray]:
    s = self.s
    enc_seg, dec_seg = rows.segments[:, :s], rows.segments[:, s:]
    targets = rows.tokens[:, s:]
    dec_pos = packing.segment_positions(dec_seg)
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    inputs = np.where(dec_pos == 0, self.bos_id, inputs)  # each pair starts from <s>
    return {"encoder_inputs": rows.tokens[:, :s], "encoder_segment_ids": enc_seg,
            "encoder_positions": packing.segment_positions(enc_seg),
            "decoder_inputs": np.where(dec_seg > 0, inputs, 0).astype(np.int32),
            "decoder_targets": targets, "decoder_segment_ids": dec_seg,
            "decoder_positions": dec_pos, "loss_weights": (dec_seg > 0).astype(np.float32)}
