"""Few-shot example tasks made from the default corpus's held-out documents (`pretrax data tasks`).

Documents of the default corpus's validation split (data/pydoc_corpus.py), which training never
reads, are cut into paragraphs and sentences; the task files under configs/tasks/ read what this
writes (their data_files are relative to the repository root: run from there).

  next_sentence_{train,test}.jsonl  {"context", "choices": [4], "label"}: which sentence follows
                                    (the other three come from other paragraphs)
  last_word_{train,test}.jsonl      {"text", "context", "word"}: a paragraph's last word
                                    (LAMBADA's format: context + " " + word == text)
  documents_test.jsonl              {"text"}: whole paragraphs, for bits per byte

  pretrax data tasks --output=workdirs/tasks
  pretrax eval --workdir=RUN --task=configs/tasks/pydoc_next_sentence.yaml --num_fewshot=3
"""

import json
import os
import random
import re

from pretrax.data import files, pydoc_corpus
from pretrax.data.errors import InputError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MIN_WORDS, _MAX_CHARS = 4, 160  # sentences short enough for tiny models' contexts


def _paragraphs(limit_docs: int) -> list[str]:
  out, docs = [], 0
  for doc_id, text in pydoc_corpus.pydoc_documents():
    if pydoc_corpus.pydoc_split(doc_id) != "validation":
      continue
    docs += 1
    for block in text.split("\n\n"):
      block = " ".join(block.split())
      if block and not block.startswith((">>>", "...")) and len(block) <= 4 * _MAX_CHARS:
        out.append(block)
    if docs >= limit_docs:
      break
  return out


def _sentences(paragraph: str) -> list[str]:
  return [s for s in _SENTENCE_END.split(paragraph)
          if len(s.split()) >= _MIN_WORDS and len(s) <= _MAX_CHARS]


def write_example_tasks(output: str, *, test_docs: int = 200, train_docs: int = 40,
                        seed: int = 0, source_docs: int = 1000) -> dict:
  """Writes the files of the module doc into `output`; returns {file: documents}."""
  if test_docs < 1 or train_docs < 1:
    raise InputError("test_docs and train_docs must be >= 1")
  rnd = random.Random(seed)
  paragraphs = _paragraphs(source_docs)
  pairs = [(p_index, a, b) for p_index, p in enumerate(paragraphs)
           for a, b in zip(_sentences(p), _sentences(p)[1:])]
  pool = [s for p in paragraphs for s in _sentences(p)]
  words = [(p, *p.rsplit(" ", 1)) for p in paragraphs if len(p.split()) >= 8]
  words = [(text, context, word) for text, context, word in words if word.strip(".,:;!?")]
  need = test_docs + train_docs
  if len(pairs) < need or len(words) < need:
    raise InputError(f"the default corpus's held-out documents give {len(pairs)} sentence pairs "
                     f"and {len(words)} paragraphs; {need} are needed: lower the counts")
  rnd.shuffle(pairs)
  rnd.shuffle(words)

  def choice_doc(pair):
    _, context, right = pair
    wrong = []
    while len(wrong) < 3:
      other = rnd.choice(pool)
      if other != right and other not in wrong:
        wrong.append(other)
    label = rnd.randrange(4)
    return {"context": context, "choices": wrong[:label] + [right] + wrong[label:],
            "label": label}

  tables = {
      "next_sentence_train.jsonl": [choice_doc(p) for p in pairs[:train_docs]],
      "next_sentence_test.jsonl": [choice_doc(p) for p in pairs[train_docs:need]],
      "last_word_train.jsonl": [{"text": t, "context": c, "word": w}
                                for t, c, w in words[:train_docs]],
      "last_word_test.jsonl": [{"text": t, "context": c, "word": w}
                               for t, c, w in words[train_docs:need]],
      "documents_test.jsonl": [{"text": t} for t, _, _ in words[train_docs:need]],
  }
  os.makedirs(output, exist_ok=True)
  for name, rows in tables.items():
    files.atomic_write(os.path.join(output, name),
                       "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                       .encode("utf-8"))
  return {name: len(rows) for name, rows in tables.items()}
