"""Where documents come from: one random-access `TextSource` per split, whatever the corpus.

`config.data.source` takes three forms:
  default               the embedded Python-docs corpus (`pydoc_corpus.PydocCorpus`), built once
  text:PATH[,PATH...]   a user's .txt/.jsonl/.parquet files or directories (`local_text.LocalText`)
  tfds:NAME[:FEATURE]   any TFDS dataset, read with `tfds.data_source`; FEATURE defaults to
                        "text". NAME may carry a config and version: `tfds:c4/en:3.1.0:text`.
The first two are built into `data_dir(config)`; a TFDS dataset lives in `config.data_dir`, else
in TFDS's own default (`$TFDS_DATA_DIR` or ~/tensorflow_datasets).
"""

import difflib
import os
import re
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from pretrax.data.errors import InputError
from pretrax.data import corpora, local_text, pydoc_corpus
from pretrax.data.config import DataConfig

_SOURCE_FORMS = ("'default' (the embedded Python docs corpus), 'text:PATH' (.txt/.jsonl/.parquet "
                 "files or directories, comma-separated) or 'tfds:NAME[:FEATURE]' (a TFDS dataset; "
                 "FEATURE defaults to 'text')")
_VERSION = re.compile(r"^\d+\.\d+\.(\d+|\*)$")  # a TFDS version, as in `c4/en:3.1.0`


class TextSource:
  """The documents of one split: `len(source)`, `source[i] -> str`. Picklable (for Grain workers).

  Wraps a TFDS `ArrayRecordDataSource` and returns one feature of each record as a decoded str.
  """

  def __init__(self, records, feature: str, name: str):
    self._records = records  # a TFDS data source: random access to example dicts
    self._feature = feature
    self.name = name  # for logs, e.g. "default[train]"

  def __len__(self) -> int:
    return len(self._records)

  def _text(self, example) -> str:
    value = example[self._feature]
    if isinstance(value, np.ndarray):  # a string Tensor feature may come back as a 0-d array
      value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

  def _index(self, i) -> int:
    i = int(i)
    n = len(self._records)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"{self.name}: document {i} out of range (it has {n})")
    return i

  def __getitem__(self, i) -> str:
    return self._text(self._records[self._index(i)])

  def __getitems__(self, indices) -> list[str]:
    """Batched access, as Grain's data sources allow.

    Reads the serialized examples and takes the one text feature out of each (a str feature is
    a tf.train.Example bytes_list): TFDS's generic decoding of every feature would take longer
    than tokenizing with the byte tokenizer.
    """
    raw = self._records.data_source.__getitems__([self._index(i) for i in indices])
    texts = []
    for record in raw:
      feature = tf_example_pb2.Example.FromString(record).features.feature[self._feature]
      values = feature.bytes_list.value
      texts.append(values[0].decode("utf-8", errors="replace") if values else "")
    return texts

  def __repr__(self) -> str:
    return f"TextSource({self.name}, {len(self)} documents)"


def data_dir(config: DataConfig) -> str:
  """Where local corpora are built: data.data_dir, else $PRETRAX_DATA_DIR, else ~/.cache."""
  return (config.data_dir or os.environ.get("PRETRAX_DATA_DIR")
          or os.path.expanduser("~/.cache/pretrax/tfds"))


def split_tfds_spec(rest: str) -> tuple[str, str | None] | None:
  """What follows `tfds:`, `NAME[:VERSION][:LAST]` -> (NAME with its version, LAST or None),
  or None when malformed. LAST is a feature (data.source) or a split (fine-tuning examples)."""
  parts = rest.split(":")
  name, parts = parts[0], parts[1:]
  if parts and _VERSION.match(parts[0]):
    name, parts = f"{name}:{parts[0]}", parts[1:]
  if not name or len(parts) > 1 or not all(parts):
    return None
  return name, parts[0] if parts else None


def _parse(source: str) -> tuple[str, str, str]:
  """`config.data.source` -> (kind, argument, feature) with kind default | text | tfds."""
  if source == "default":
    return "default", "", "text"
  kind, _, rest = source.partition(":")
  if kind == "text" and rest.strip():
    return "text", rest, "text"
  parsed = split_tfds_spec(rest) if kind == "tfds" and rest else None
  if parsed:
    return "tfds", parsed[0], parsed[1] or "text"
  raise InputError(f"config.data.source={source!r} is not one of {_SOURCE_FORMS}")


def _base_splits(split: str) -> list[str]:
  """The split names in a TFDS split spec: `train[:90%]+test` -> [train, test]."""
  return [part.split("[")[0].strip() for part in split.split("+")]


def _check_split(source: str, split: str, available) -> None:
  available = sorted(available)
  for name in _base_splits(split):
    if available and name not in available:
      raise InputError(f"config.data.source={source!r} has no split {name!r}; it has "
                       f"{', '.join(available)} (set config.data.train_split / eval_split)")


def _tfds_data_source(name: str, split: str | None, tfds_dir: str | None):
  # TFDS picks ArrayRecord (random access, no TensorFlow) only when given neither data_dir nor
  # builder_kwargs; say it always, or a data_dir would make it write TFRecords.
  return tfds.data_source(name, split=split, data_dir=tfds_dir,
                          builder_kwargs={"file_format": "array_record"})


def _open_tfds(source: str, name: str, feature: str, split: str, tfds_dir: str | None):
  try:
    records = _tfds_data_source(name, split, tfds_dir)
  except tfds.core.registered.DatasetNotFoundError:
    base = name.split("/")[0].split(":")[0]
    builders = sorted(set(tfds.list_builders(with_community_datasets=False)))
    close = difflib.get_close_matches(base, builders, n=5)
    raise InputError(f"config.data.source={source!r}: TFDS has no dataset {base!r}"
                     + (f"; did you mean {', '.join(close)}?" if close else "")) from None
  except ValueError as e:
    if "split" not in str(e).lower():
      raise
    _check_split(source, split, tfds.builder(name, data_dir=tfds_dir).info.splits.keys())
    raise
  features = records.dataset_info.features
  if feature not in features.keys():
    raise InputError(f"config.data.source={source!r}: {name} has no feature {feature!r}; its "
                     f"features are {', '.join(sorted(features.keys()))} (use tfds:{name}:FEATURE)")
  spec = features[feature]
  if not (isinstance(spec, (tfds.features.Text, tfds.features.Tensor))
          and spec.shape == () and spec.np_dtype == np.object_):
    raise InputError(f"config.data.source={source!r}: feature {feature!r} of {name} is {spec}, "
                     "not text; name a text feature with tfds:NAME:FEATURE")
  return records


def open_source(config: DataConfig, split: str) -> TextSource:
  """The documents of `split` (e.g. "train", "validation", "train[:1000]") of config.source.

  Builds the default or local-text corpus into `data_dir(config)` the first time.
  """
  kind, argument, feature = _parse(config.source)
  if kind == "tfds":
    records = _open_tfds(config.source, argument, feature, split, config.data_dir or None)
  else:
    builder = _prepared_builder(config)
    _check_split(config.source, split, builder.info.splits.keys())
    records = builder.as_data_source(split=split)
  return TextSource(records, feature, name=f"{config.source}[{split}]")


def _prepared_builder(config: DataConfig):
  """config.source's TFDS builder, its dataset built (local corpora) or prepared (catalog)."""
  kind, argument, _ = _parse(config.source)
  if kind == "tfds":
    builder = tfds.builder(argument, data_dir=config.data_dir or None)
    if not builder.info.splits:  # not prepared yet: prepare it as open_source does
      _tfds_data_source(argument, None, config.data_dir or None)
      builder = tfds.builder(argument, data_dir=config.data_dir or None)
    return builder
  if kind == "default":
    return corpora.build(pydoc_corpus.pydoc_builder(data_dir(config)))
  return corpora.build(local_text.local_text_builder(
      argument, config.validation_fraction, data_dir(config), config.txt_documents))


def split_bytes(config: DataConfig, split: str) -> int:
  """About how many bytes the documents of `split` take on disk (a split spec such as
  `train[:10%]` gets its share of its splits' bytes)."""
  splits = _prepared_builder(config).info.splits
  bases = _base_splits(split)
  total = sum(splits[b].num_bytes for b in bases)
  examples = sum(splits[b].num_examples for b in bases)
  return int(total * splits[split].num_examples / max(examples, 1))


def describe_corpus(config: DataConfig, split: str) -> dict:
  """The identity of config.source as built: its dataset name and version (for local text, a key
  of every file's path, size and modification time) and the documents in `split` and in each
  split. Saved with the data position, which is only meaningful for the same corpus."""
  builder = _prepared_builder(config)
  name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
  return {"dataset": f"{name}:{builder.version}",
          "documents": {s: info.num_examples for s, info in sorted(builder.info.splits.items())},
          "split": split}


def _tfds_split_names(name: str, tfds_dir: str | None) -> list[str]:
  splits = list(tfds.builder(name, data_dir=tfds_dir).info.splits.keys())
  if not splits:  # not prepared yet: prepare it (as open_source would) and ask again
    splits = list(_tfds_data_source(name, None, tfds_dir).keys())
  return splits


def eval_split(config: DataConfig) -> str:
  """config.eval_split if set; else "validation" if the dataset has it; else "test"."""
  if config.eval_split:
    return config.eval_split
  kind, argument, _ = _parse(config.source)
  if kind != "tfds":
    return "validation"  # both local corpora always hold one out
  splits = _tfds_split_names(argument, config.data_dir or None)
  for name in ("validation", "test"):
    if name in splits:
      return name
  raise InputError(f"config.data.source={config.source!r} has no validation or test split "
                   f"(its splits: {', '.join(sorted(splits)) or 'unknown'}); set "
                   "config.data.eval_split, e.g. to 'train[-1%:]'")


def iter_texts(config: DataConfig, split: str, max_documents: int | None = None) -> Iterator[str]:
  """The documents of a split in order, at most `max_documents` (for training a tokenizer)."""
  source = open_source(config, split)
  n = len(source) if max_documents is None else min(max_documents, len(source))
  for i in range(n):
    yield source[i]
