"""Documents as sentences, and sentence chunks: the rows BERT's sentence pairs are drawn from.

A document is cut into sentences (`split_sentences`), each tokenized on its own; sentences
without tokens are dropped. `chunk_rows` packs a document's sentences, in order, into chunks of at
most C tokens (C = seq_len - 3, the room `[CLS] A [SEP] B [SEP]` leaves): a chunk takes sentences
while they fit, and the sentence that does not fit starts the next chunk. A sentence longer than C
is first cut into pieces of C tokens (the last one shorter), each a sentence of its own. A chunk
never spans two documents.

A chunk is one row: its token ids from slot 0, its sentence ids (1, 2, ... k in the row; 0 =
padding) beside them, and the index of its document in the split. data/bert_pipeline.py draws a
pair from each row as it is read.
"""

import re
from typing import Iterable, Iterator

import numpy as np

# A sentence end inside a line: . ! ? and closing quotes/brackets, then spaces.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*[ \t]+")


def split_sentences(text: str) -> list[str]:
  """Document -> sentences whose concatenation is `text`; [] for "".

  A line ends a sentence, and so does a sentence end inside a line (. ! ? and closing
  quotes/brackets, then spaces). Whitespace-only pieces join the sentence before them (or, at the
  start, the first one).
  """
  sentences = []
  for line in text.splitlines(keepends=True):
    if _SENTENCE_END.search(line) is None:
      pieces = (line,)
    else:
      pieces, start = [], 0
      for match in _SENTENCE_END.finditer(line):
        pieces.append(line[start:match.end()])
        start = match.end()
      if start < len(line):
        pieces.append(line[start:])
    for piece in pieces:
      if sentences and (piece.isspace() or sentences[-1].isspace()):
        sentences[-1] += piece
      else:
        sentences.append(piece)
  return sentences


def document_sentences(texts: list[str], tokenizer) -> list[tuple[np.ndarray, list[int]]]:
  """Texts -> for each, (its token ids [n] int32, the token counts of its non-empty sentences,
  which add up to n), each sentence tokenized on its own (one tokenizer call for all)."""
  split = [split_sentences(t) for t in texts]
  ids, lengths = tokenizer.encode_joined([s for sentences in split for s in sentences])
  counts = np.cumsum([0] + [len(sentences) for sentences in split])
  token_starts = np.concatenate([[0], np.cumsum(lengths)])
  out = []
  for a, b in zip(counts[:-1], counts[1:]):
    out.append((ids[token_starts[a]:token_starts[b]], [n for n in lengths[a:b].tolist() if n]))
  return out


def chunk_bounds(lengths: list[int], capacity: int) -> list[list[int]]:
  """A document's sentence lengths -> its chunks, each the token counts of its pieces (the
  pieces of one chunk are consecutive; see the module doc)."""
  out, chunk, length = [], [], 0
  for n in lengths:
    while n > 0:
      piece = min(n, capacity)
      if length + piece > capacity:
        out.append(chunk)
        chunk, length = [], 0
      chunk.append(piece)
      length += piece
      n -= piece
  if chunk:
    out.append(chunk)
  return out


def chunk_rows(documents: Iterable[tuple[int, tuple[np.ndarray, list[int]]]], capacity: int, *,
               dtype=np.int32, block_rows: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(document index, (tokens, sentence lengths)) pairs (`document_sentences`) -> blocks (rows
  [n, 2, capacity] of `dtype`: token ids at [i, 0], sentence ids at [i, 1]; documents [n]
  uint64)."""
  block = np.zeros((block_rows, 2, capacity), dtype)
  docs = np.zeros(block_rows, np.uint64)
  r = 0
  for index, (tokens, lengths) in documents:
    at = 0
    for pieces in chunk_bounds(lengths, capacity):
      n = sum(pieces)
      block[r, 0, :n] = tokens[at:at + n]
      block[r, 1, :n] = np.repeat(np.arange(1, len(pieces) + 1), pieces)
      docs[r] = index
      at += n
      r += 1
      if r == block_rows:
        yield block, docs
        block, docs, r = np.zeros_like(block), np.zeros_like(docs), 0
  if r:
    yield block[:r], docs[:r]
