"""Data configuration: where text comes from, how it is tokenized and packed."""

import dataclasses


@dataclasses.dataclass
class DataConfig:
  source: str = "default"      # default (embedded Python docs corpus) | text:PATH | tfds:NAME[:FEATURE]
  tokenizer: str = "byte"      # byte | PATH to a SentencePiece .model | train (train one on the corpus first)
  tokenizer_vocab_size: int = 8_000     # vocabulary of the tokenizer trained when tokenizer=train
  tokenizer_model_type: str = "unigram"  # unigram | bpe, when tokenizer=train
  seq_len: int = 256           # tokens per packed training row
  data_dir: str = ""           # where corpora are built as TFDS datasets; "": $PRETRAX_DATA_DIR or ~/.cache/pretrax/tfds
  train_split: str = "train"
  eval_split: str = ""         # "": validation if the dataset has one, else test
  validation_fraction: float = 0.1  # share of a local corpus's bytes held out as validation (its last documents)
  shuffle: bool = True         # shuffle training documents (seeded by config.train.seed; reshuffled each epoch)
  num_workers: int = 0         # Grain worker processes for tokenizing; 0 runs in the training process
