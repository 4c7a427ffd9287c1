"""Labelled examples for fine-tuning a classifier: JSONL files or TFDS datasets -> padded arrays.

`config.data.train` / `config.data.eval` take two forms:
  PATH                 a JSONL file, one object a line, its fields set by the format (below).
                       Blank lines are skipped.
  tfds:NAME[:SPLIT]    a TFDS dataset, read with `tfds.data_source` (ArrayRecord, as
                       data/sources.py does). NAME may carry a version (`glue/sst2:2.0.0`);
                       SPLIT defaults to train (data.train) or validation (data.eval). The text
                       fields are the first pair in TFDS_TEXT_FIELDS present (e.g. GLUE's `sentence`,
                       `sentence1`/`sentence2`, `premise`/`hypothesis`); the label is `label`.
                       Not for multiple_choice.

Formats (config.finetune.format; GPT-1's input transformations, Radford et al. 2018, §3.3), each
example K sequences:
  classify         {"text", "text_b" (optional), "label"}: one sequence, a or the pair (a, b).
  entailment       {"premise", "hypothesis", "label"} (or "text", "text_b"): the pair
                   (premise, hypothesis), one sequence.
  similarity       {"text", "text_b", "label"}: GPT reads both orderings, (a, b) and (b, a), K = 2,
                   and adds their final states; BERT reads the pair (a, b) as classify does. The
                   label is a class (no regression).
  multiple_choice  {"context", "choices": [str, ...], "label": index of the correct choice}: one
                   sequence (context, choice_i) per choice, K = the number of choices, the same
                   for every example of a run (`check_choices`).

Labels (`label_vocabulary`): all ints or all strings within a run. Ints are class indices
0..max (a negative one, e.g. GLUE's -1 for unlabelled test examples, is an error); strings are
mapped to 0..K-1 in sorted order. The mapping (a list, index = class id) is saved as labels.json
in the fine-tuned workdir; an eval label not in it is an error naming FILE:LINE and the label.
Multiple choice: the labels are the choice indices 0..C-1.

Framing (`frame`, T = config.data.seq_len), per model family, of a sequence (a, b):
  bert  [CLS] a [SEP]            token types 0                        (BERT paper, §3)
        [CLS] a [SEP] b [SEP]    token types 0 on [CLS] a [SEP], 1 on b [SEP]
  gpt   <s> a </s>               token types all 0 (GPT has no type embeddings)
        <s> a [SEP] b </s>       GPT-1's start / delimiter / extract tokens are <s>, [SEP] and
                                 </s>; the classifier reads the hidden state of the final </s>.
A pair longer than T loses tokens from the end of the longer of a and b (b on ties), one at a
time, as BERT's `_truncate_seq_pair`; a single text loses tokens from its end. Rows are
left-aligned: segment ids are 1 on the tokens and 0 on the padding after them. The arrays are
[N, K, T]: example, sequence of the example, position.
"""

import dataclasses
import os
from typing import Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from pretrax.data import global_batches, jsonl, packing, sources
from pretrax.data.errors import InputError

# (text, text_b) field names tried in order on a TFDS dataset's features; None: single text.
TFDS_TEXT_FIELDS = (("text", "text_b"), ("sentence1", "sentence2"), ("question1", "question2"),
                    ("premise", "hypothesis"), ("question", "sentence"), ("question", "passage"),
                    ("text", None), ("sentence", None))
TFDS_LABEL_FIELD = "label"
FEATURES = ("input_ids", "segment_ids", "token_type_ids")  # [N, K, T] int32; "label" [N] int32
# What a JSONL line of each format holds, for error messages.
JSONL_FIELDS = {
    "classify": '"text" and "label" ("text_b" optional)',
    "entailment": '"premise", "hypothesis" and "label" (or "text", "text_b" and "label")',
    "similarity": '"text", "text_b" and "label"',
    "multiple_choice": '"context", "choices" (a list of strings) and "label" (the index of the '
                       'correct choice)'}


@dataclasses.dataclass
class Example:
  text: str                   # the text, premise or context
  text_b: str | None          # the second text or hypothesis; None: a single text
  label: int | str            # a class; multiple choice: the correct choice's index
  where: str  # "FILE:LINE" or "tfds:NAME[SPLIT] example I": where error messages point
  choices: list[str] | None = None  # multiple choice only


# --------------------------------------------------------------------------------------------
# Reading.


def read_examples(spec: str, *, default_split: str, data_dir: str | None = None,
                  field: str = "config.data.train", format: str = "classify") -> list[Example]:
  """The examples of a JSONL file or `tfds:NAME[:SPLIT]` in `format` (config.finetune.format);
  `field` names the setting in errors."""
  if not spec:
    raise InputError(f"{field} is empty: give a JSONL file or tfds:NAME[:SPLIT], e.g. "
                     f"--{field}=train.jsonl")
  if not spec.startswith("tfds:"):
    return read_jsonl(spec, field, format)
  if format == "multiple_choice":
    raise InputError(f"{field}={spec!r}: config.finetune.format=multiple_choice reads JSONL "
                     f"files ({JSONL_FIELDS[format]}), not TFDS datasets")
  examples = _read_tfds(spec, default_split, data_dir, field)
  if format in ("entailment", "similarity") and examples[0].text_b is None:
    raise InputError(f"{field}={spec!r}: config.finetune.format={format} needs text pairs, but "
                     "this dataset has a single text field")
  return examples


def read_jsonl(path: str, field: str = "config.data.train",
               format: str = "classify") -> list[Example]:
  """One Example per non-blank line; errors name PATH:LINE and the missing field."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{field}={path!r}: no such file (expected a JSONL file with "
                            f"{JSONL_FIELDS[format]} on each line, or tfds:NAME[:SPLIT])")
  examples = [_jsonl_example(record, where, format)
              for where, record in jsonl.read_objects(path, JSONL_FIELDS[format])]
  if not examples:
    raise InputError(f"{field}={path!r} holds no examples")
  return examples


def _jsonl_example(record: dict, where: str, format: str) -> Example:
  """One JSONL object in `format` -> Example."""
  names = {"classify": ("text", "text_b"), "similarity": ("text", "text_b"),
           "multiple_choice": ("context", "choices"),
           "entailment": ("premise", "hypothesis") if "text" not in record else ("text", "text_b")}
  a, b = names[format]
  required = (a, "label") if format == "classify" else (a, b, "label")
  for name in required:
    if name not in record:
      raise InputError(f"{where}: missing field {name!r} (config.finetune.format={format}: each "
                       f"line needs {JSONL_FIELDS[format]})")
  if format != "multiple_choice":
    return _example(record[a], record.get(b), record["label"], where)
  choices, label = record["choices"], record["label"]
  if (not isinstance(choices, list) or len(choices) < 2
      or not all(isinstance(c, str) for c in choices)):
    raise InputError(f"{where}: field 'choices' must be a list of at least 2 strings, got "
                     f"{choices!r:.80}")
  if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
    raise InputError(f"{where}: label {label!r} must be the index of the correct choice, an int "
                     f"in 0..{len(choices) - 1}")
  return dataclasses.replace(_example(record[a], None, label, where), choices=choices)


def _example(text, text_b, label, where: str) -> Example:
  for name, value in (("text", text), ("text_b", text_b)):
    if value is not None and not isinstance(value, str):
      raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
  if isinstance(label, bool) or not isinstance(label, (int, str)):
    raise InputError(f"{where}: label {label!r} must be an int (class index) or a string")
  if isinstance(label, int) and label < 0:
    raise InputError(f"{where}: label {label} is negative; int labels are class indices 0, 1, ..."
                     " (TFDS/GLUE test splits mark unlabelled examples with -1: evaluate on "
                     "a labelled split)")
  return Example(text, text_b, label, where)


def parse_tfds(spec: str, default_split: str) -> tuple[str, str]:
  """`tfds:NAME[:VERSION][:SPLIT]` -> (name with version, split)."""
  parsed = sources.split_tfds_spec(spec[len("tfds:"):])
  if parsed is None:
    raise InputError(f"{spec!r}: expected tfds:NAME[:SPLIT], e.g. tfds:glue/sst2:validation")
  return parsed[0], parsed[1] or default_split


def _read_tfds(spec: str, default_split: str, data_dir: str | None, field: str) -> list[Example]:
  import tensorflow_datasets.text  # noqa: F401  registers TFDS's legacy text builders (glue, ...)
  name, split = parse_tfds(spec, default_split)
  try:
    records = tfds.data_source(name, split=split, data_dir=data_dir,
                               builder_kwargs={"file_format": "array_record"})
  except tfds.core.registered.DatasetNotFoundError:
    raise InputError(f"{field}={spec!r}: TFDS has no dataset {name!r}") from None
  features = records.dataset_info.features
  names = set(features.keys())
  fields = next(((a, b) for a, b in TFDS_TEXT_FIELDS if a in names and (b is None or b in names)),
                None)
  if fields is None or TFDS_LABEL_FIELD not in names:
    raise InputError(f"{field}={spec!r}: found no text and label fields among {sorted(names)} "
                     f"(text fields tried: {', '.join(sorted({a for a, _ in TFDS_TEXT_FIELDS}))}; "
                     f"label: {TFDS_LABEL_FIELD!r})")
  a, b = fields
  examples = []
  for i in range(len(records)):
    record = records[i]
    label = record[TFDS_LABEL_FIELD]
    label = label.item() if isinstance(label, np.ndarray) else label
    label = label.decode("utf-8") if isinstance(label, bytes) else label
    label = int(label) if isinstance(label, (int, np.integer)) else label
    examples.append(_example(text_of(record[a]), text_of(record[b]) if b else None, label,
                             f"tfds:{name}[{split}] example {i}"))
  if not examples:
    raise InputError(f"{field}={spec!r}: split {split!r} holds no examples")
  return examples


def text_of(value) -> str:
  """A TFDS text feature's value as str."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------
# Labels.


def label_vocabulary(examples: list[Example]) -> list:
  """The class of each id: [0, 1, ..., max] for int labels, sorted distinct strings otherwise."""
  kind = type(examples[0].label)
  for ex in examples:
    if type(ex.label) is not kind:
      raise InputError(f"{ex.where}: label {ex.label!r} ({type(ex.label).__name__}) is not of "
                       f"the kind of {examples[0].where}'s label {examples[0].label!r} "
                       f"({kind.__name__}); use ints or strings throughout")
  if kind is int:
    return list(range(max(ex.label for ex in examples) + 1))
  return sorted({ex.label for ex in examples})


def label_ids(examples: list[Example], labels: list, known_from: str) -> np.ndarray:
  """[N] int32 class ids of `examples` under `labels`; `known_from` says where those came from
  (e.g. "the training data (config.data.train=...)") for the error on an unknown label."""
  index = {(type(l), l): i for i, l in enumerate(labels)}
  ids = np.empty(len(examples), np.int32)
  for n, ex in enumerate(examples):
    i = index.get((type(ex.label), ex.label))
    if i is None:
      shown = ", ".join(map(repr, labels[:20])) + (", ..." if len(labels) > 20 else "")
      raise InputError(f"{ex.where}: label {ex.label!r} does not occur in {known_from}; its "
                       f"labels: {shown}")
    ids[n] = i
  return ids


def check_choices(examples: list[Example], num_choices: int, known_from: str) -> None:
  """Raises naming FILE:LINE for an example without exactly `num_choices` choices; `known_from`
  says where that number came from."""
  for ex in examples:
    if len(ex.choices) != num_choices:
      raise InputError(f"{ex.where}: {len(ex.choices)} choices, but this run has {num_choices} "
                       f"({known_from}); every example needs the same number of choices")


# --------------------------------------------------------------------------------------------
# Token ids.


def _truncate(a: np.ndarray, b: np.ndarray | None, budget: int):
  """Drops tokens from the ends: of a single text, or of a pair as BERT's _truncate_seq_pair."""
  if b is None:
    return a[:budget], None
  cut_a, cut_b = packing.pair_cuts(len(a), len(b), budget)
  return a[:len(a) - cut_a], b[:len(b) - cut_b]


def frame(tokenizer, family: str, a: np.ndarray, b: np.ndarray | None,
          seq_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
  """Token ids of a (and b) -> (ids [n], token types [n], truncated?) with n <= seq_len."""
  specials = 2 if b is None else 3
  if seq_len < specials + (1 if b is None else 2):
    raise InputError(f"config.data.seq_len={seq_len} leaves no room for text after "
                     f"{specials} special tokens")
  total = len(a) + (0 if b is None else len(b))
  a, b = _truncate(a, b, seq_len - specials)
  truncated = len(a) + (0 if b is None else len(b)) < total
  if family == "bert":
    first = [tokenizer.cls_id, *a, tokenizer.sep_id]
    second = [] if b is None else [*b, tokenizer.sep_id]
  else:
    end = [tokenizer.eos_id] if b is None else [tokenizer.sep_id]
    first = [tokenizer.bos_id, *a, *end]
    second = [] if b is None else [*b, tokenizer.eos_id]
  ids = np.asarray(first + second, np.int32)
  types = np.concatenate([np.zeros(len(first), np.int32), np.ones(len(second), np.int32)])
  if family != "bert":
    types[:] = 0
  return ids, types, truncated


def sequences(ex: Example, format: str, family: str) -> list[tuple[str, str | None]]:
  """The (a, b) text pairs an example is read as, one per sequence (the K axis)."""
  if format == "multiple_choice":
    return [(ex.text, choice) for choice in ex.choices]
  if format == "similarity" and family == "gpt":
    return [(ex.text, ex.text_b), (ex.text_b, ex.text)]  # no inherent order: both (GPT-1 §3.3)
  return [(ex.text, ex.text_b)]


def encode_examples(tokenizer, examples: list[Example], *, family: str, seq_len: int,
                    format: str = "classify") -> tuple[dict[str, np.ndarray], int]:
  """Examples -> ({input_ids, segment_ids, token_type_ids: [N, K, T] int32}, number of
  sequences truncated); K sequences per example as `sequences` gives them."""
  n, k = len(examples), len(sequences(examples[0], format, family))
  out = {name: np.zeros((n, k, seq_len), np.int32) for name in FEATURES}
  truncated = 0
  for i, ex in enumerate(examples):
    pairs = sequences(ex, format, family)
    if len(pairs) != k:
      raise InputError(f"{ex.where}: {len(pairs)} sequences, but {examples[0].where} has {k}")
    ids_of = {}  # each distinct text tokenized once (a context is shared by its choices)
    for j, pair in enumerate(pairs):
      a, b = (None if text is None else ids_of.setdefault(
          text, np.asarray(tokenizer.encode(text), np.int32)) for text in pair)
      ids, types, cut = frame(tokenizer, family, a, b, seq_len)
      out["input_ids"][i, j, :len(ids)] = ids
      out["segment_ids"][i, j, :len(ids)] = 1
      out["token_type_ids"][i, j, :len(ids)] = types
      truncated += cut
  return out, truncated


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int,
                  shuffle: bool = True) -> np.ndarray:
  """[batch_size] example indices of global batch `step`: epochs of seeded permutations.

  A pure function of its arguments, so a resumed run reads exactly the batches it would have.
  """
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    order = (np.random.default_rng([seed, 0xF17E, int(epoch)]).permutation(num_examples)
             if shuffle else np.arange(num_examples))
    out[epochs == epoch] = order[offsets[epochs == epoch]]
  return out


def process_rows(arrays: dict[str, np.ndarray], indices: np.ndarray, process_index: int,
                 process_count: int) -> dict[str, np.ndarray]:
  """This process's share (a contiguous slice) of the global batch of example `indices`."""
  mine = indices[global_batches.process_slice(len(indices), process_index, process_count)]
  return {k: v[mine] for k, v in arrays.items()}


class ExampleBatches(grain.DatasetIterator):
  """This process's rows of global training batch 0, 1, 2, ... (`batch_indices`), endlessly.

  The state is the number of batches read, so a resumed run reads exactly the batches it would
  have read.
  """

  def __init__(self, arrays: dict[str, np.ndarray], *, global_batch_size: int, seed: int,
               shuffle: bool, process_index: int = 0, process_count: int = 1):
    super().__init__()
    global_batches.process_slice(global_batch_size, process_index, process_count)  # checks it
    self._arrays, self._batch_size, self._seed, self._shuffle = (arrays, global_batch_size,
                                                                 seed, shuffle)
    self._process = (process_index, process_count)
    self._step = 0

  def __next__(self) -> dict[str, np.ndarray]:
    indices = batch_indices(self._step, len(self._arrays["label"]), self._batch_size, self._seed,
                            self._shuffle)
    self._step += 1
    return process_rows(self._arrays, indices, *self._process)

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    self._step = int(state["step"])


def eval_batches(arrays: dict[str, np.ndarray], *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in global batches whose last one is padded with all-zero rows
  (segment ids 0: weight 0); yields this process's rows of each."""
  n = len(arrays["label"])
  padded = {k: np.concatenate([v, np.zeros((-n % global_batch_size,) + v.shape[1:], v.dtype)])
            for k, v in arrays.items()}
  for start in range(0, len(padded["label"]), global_batch_size):
    yield process_rows(padded, np.arange(start, start + global_batch_size), process_index,
                       process_count)
