"""Data configuration: where text comes from, how it is tokenized and packed."""

import dataclasses


@dataclasses.dataclass
class DataConfig:
  source: str = "default"      # default (embedded Python docs corpus) | text:PATH | tfds:NAME[:FEATURE]
  tokenizer: str = "byte"      # byte | PATH to a SentencePiece .model | PATH to a Hugging Face
                               # tokenizer.json (or its folder) | train (train one on the corpus first)
  tokenizer_vocab_size: int = 8_000     # vocabulary of the tokenizer trained when tokenizer=train
  tokenizer_model_type: str = "unigram"  # unigram | bpe, when tokenizer=train
  seq_len: int = 256           # tokens per packed training row
  data_dir: str = ""           # where corpora are built as TFDS datasets; "": $PRETRAX_DATA_DIR or ~/.cache/pretrax/tfds
  train_split: str = "train"
  eval_split: str = ""         # "": validation if the dataset has one, else test
  validation_fraction: float = 0.1  # share of a local corpus's bytes held out as validation (its last documents)
  txt_documents: str = "stream"  # a .txt file in text:PATHS: stream (continuous text) | paragraphs (at blank lines) | a separator such as <|endoftext|>
  shuffle: bool = True         # shuffle training documents (seeded by config.train.seed; reshuffled each epoch)
  rows_dir: str = ""           # where packed rows are built; "": DATA_DIR/pretrax_rows (a local or mounted path)
  build_workers: int = 0       # processes that build packed rows (pretrax data build); 0: one per core
  build_shard_mb: int = 64     # documents per packed-rows shard, in MB of the corpus (the rows depend on it)
  # What the batches teach. causal: next-token targets (GPT). mlm: masked tokens in packed rows
  # (RoBERTa style). mlm+nsp: masked tokens in [CLS] A [SEP] B [SEP] pairs, B the true next
  # span or a random one (original BERT). mlm+sop: the same pairs, B after A or swapped (ALBERT).
  # Encoder-decoders: denoise: BART's text infilling and sentence permutation, the original text
  # as targets. span_corruption: T5's, noise spans replaced by sentinels, the spans as targets.
  # seq2seq: supervised source -> target pairs of data.train / data.eval (JSONL).
  objective: str = "causal"
  mask_rate: float = 0.15      # share of non-special tokens chosen for prediction
  mask_token_rate: float = 0.8   # of the chosen: replaced by [MASK]
  random_token_rate: float = 0.1  # of the chosen: replaced by a random token (the rest stay)
  max_predictions_per_seq: int = 20  # at most this many chosen per row (BERT: 20 at 128, 80 at 512)
  whole_word_masking: bool = False   # choose whole words (all their pieces) instead of pieces
  denoise_mask_ratio: float = 0.3    # denoise: share of words masked, in spans
  denoise_poisson_lambda: float = 3.0  # denoise: span lengths in words ~ Poisson(lambda); 0-length spans insert a mask
  denoise_random_ratio: float = 0.1  # denoise: share of the span masks that are a random token instead
  denoise_permute_sentences: bool = True  # denoise: shuffle the sentences of each row first
  noise_density: float = 0.15        # span_corruption: share of tokens in noise spans
  mean_noise_span_length: float = 3.0  # span_corruption: mean tokens per noise span
  extra_ids: int = 100               # span_corruption: sentinel ids after the tokenizer's vocabulary, counting down from the last
  # Fine-tuning examples: a JSONL file ({"text", optional "text_b", "label"}) or tfds:NAME[:SPLIT];
  # for data.objective=seq2seq a JSONL file of {"source", "target"} pairs or tfds:NAME[:SPLIT].
  train: str = ""
  eval: str = ""
  pair_features: str = ""      # seq2seq from tfds: "SOURCE,TARGET" features; "": the dataset's supervised keys
