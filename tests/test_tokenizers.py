"""Tokenizers: byte layout, SentencePiece training on real text, save/load, errors."""

import json
import os
import re

import numpy as np
import pytest
import sentencepiece

from pretrax.data import tokenizers
from pretrax.data.tokenizers import (
    BOS_ID, CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID)

TRAIN_BYTES = 200_000  # the head of the file trains the models (< 1 s each)
HELD_OUT_BYTES = 5_000  # the tail of the file is never trained on
MULTILINGUAL = "héllo 世界 🙂"
AWKWARD = "  two  spaces\tand\ttabs\n\nnewlines \r\n[MASK] [CLS] <s> </s> <pad> ▒ end "


@pytest.fixture(scope="module")
def shakespeare(shakespeare_text) -> str:
  return shakespeare_text


@pytest.fixture(scope="module")
def trained(shakespeare, tmp_path_factory):
  """{"unigram": tokenizer, "bpe": tokenizer}, vocab 1000, trained on the first 200 KB."""
  directory = tmp_path_factory.mktemp("spm")
  docs = shakespeare[:TRAIN_BYTES].split("\n\n")  # speeches as documents
  return {model_type: tokenizers.train_sentencepiece(
              docs, str(directory / model_type), vocab_size=1000, model_type=model_type)
          for model_type in tokenizers.MODEL_TYPES}


# Byte tokenizer.

def test_byte_ids_are_utf8_bytes_plus_seven():
  tok = tokenizers.ByteTokenizer()
  for text in ["hello, world", MULTILINGUAL, AWKWARD, ""]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [7 + b for b in text.encode("utf-8")])
    assert tok.decode(ids) == text
  assert len(tok.encode(MULTILINGUAL)) == 6 + 1 + 6 + 1 + 4  # h é(2) llo, space, 世界, space, 🙂


def test_byte_special_layout():
  tok = tokenizers.ByteTokenizer()
  assert tok.kind == "byte" and tok.vocab_size == 263
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert (tok.cls_id, tok.sep_id, tok.mask_id) == (4, 5, 6)
  assert tok.special_ids == frozenset(range(7))
  assert SPECIAL_TOKENS == ("<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]")
  assert tok.encode("\x00").tolist() == [7] and tok.encode("\xff").tolist() == [7 + 0xC3, 7 + 0xBF]
  assert tok.encode(AWKWARD).min() >= 7  # "[MASK]" in text is text
  assert tok.describe() == {
      "kind": "byte", "vocab_size": 263, "adds_dummy_prefix": False,
      "special_tokens": {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "[CLS]": 4, "[SEP]": 5, "[MASK]": 6}}


def test_byte_decode_skips_specials_and_replaces_invalid_utf8():
  tok = tokenizers.ByteTokenizer()
  a, b = 7 + ord("a"), 7 + ord("b")
  assert tok.decode([BOS_ID, a, SEP_ID, b, EOS_ID, PAD_ID, PAD_ID]) == "ab"
  assert tok.decode(np.array([MASK_ID, CLS_ID, UNK_ID])) == ""
  assert tok.decode([a, 7 + 0xFF, b]) == "a\ufffdb"   # 0xFF never occurs in UTF-8
  assert tok.decode([7 + 0xE4, 7 + 0xB8, b]) == "\ufffdb"  # 世 cut after 2 of its 3 bytes
  with pytest.raises(ValueError, match="263"):
    tok.decode([263])
  with pytest.raises(ValueError, match="outside"):
    tok.decode([-1])


def test_byte_token_byte_lengths():
  tok = tokenizers.ByteTokenizer()
  lengths = tok.token_byte_lengths()
  assert lengths.shape == (263,) and lengths.dtype == np.int32
  assert lengths[:7].tolist() == [0] * 7 and (lengths[7:] == 1).all()
  for text in [MULTILINGUAL, AWKWARD]:
    ids = np.concatenate([[BOS_ID], tok.encode(text), [EOS_ID, PAD_ID]])
    assert lengths[ids].sum() == len(text.encode("utf-8"))


def test_byte_word_starts():
  tok = tokenizers.ByteTokenizer()
  text = "the cat  sat\non"
  expected = [i for i, c in enumerate(text) if c not in " \n" and (i == 0 or text[i - 1] in " \n")]
  assert expected == [0, 4, 9, 13]
  assert np.flatnonzero(tok.word_starts(tok.encode(text))).tolist() == expected
  # Leading whitespace joins the first word; specials are never starts; the token after one is.
  assert np.flatnonzero(tok.word_starts(tok.encode(" \n hi there"))).tolist() == [0, 6]
  ids = np.concatenate([[BOS_ID], tok.encode("ab c"), [SEP_ID], tok.encode(" d"), [EOS_ID]])
  assert tok.word_starts(ids).tolist() == [False, True, False, False, True, False, True, False, False]
  assert tok.word_starts([]).tolist() == []


# SentencePiece.

@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_trained_model_has_pretrax_specials(trained, model_type):
  tok = trained[model_type]
  assert tok.kind == "sentencepiece" and tok.vocab_size == 1000
  raw = sentencepiece.SentencePieceProcessor(model_file=tok.model_path)  # independent of the wrapper
  assert [raw.id_to_piece(i) for i in range(7)] == list(SPECIAL_TOKENS)
  assert (raw.pad_id(), raw.unk_id(), raw.bos_id(), raw.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
  assert raw.piece_to_id("[MASK]") == MASK_ID and raw.is_control(MASK_ID)
  assert os.path.isfile(tok.model_path[:-len(".model")] + ".vocab")


@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_trained_model_round_trips_and_compresses(trained, shakespeare, model_type):
  tok = trained[model_type]
  held_out = shakespeare[-HELD_OUT_BYTES:]
  for text in [held_out, MULTILINGUAL, AWKWARD, " leading space", "x", ""]:
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert not set(ids.tolist()) & tok.special_ids  # "[MASK]" etc. in the text stay text
    assert tok.decode(ids) == text
  # A vocabulary of 1000 learned on the same author packs about 2 bytes into a token (each
  # newline is a byte piece of its own: training sees lines, never a newline).
  assert len(tok.encode(held_out)) < 0.6 * len(held_out.encode("utf-8"))
  ids = tok.encode("to be")
  assert tok.decode(np.concatenate([[BOS_ID], ids, [EOS_ID, PAD_ID]])) == "to be"


@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_trained_token_byte_lengths_count_utf8_bytes(trained, shakespeare, model_type):
  tok = trained[model_type]
  raw = sentencepiece.SentencePieceProcessor(model_file=tok.model_path)
  lengths = tok.token_byte_lengths()
  assert lengths.shape == (1000,) and lengths.dtype == np.int32
  assert lengths[:7].tolist() == [0] * 7
  assert lengths[raw.piece_to_id("<0x41>")] == 1 and lengths[raw.piece_to_id("<0xF0>")] == 1
  assert raw.piece_to_id("\u2581the") != UNK_ID and lengths[raw.piece_to_id("\u2581the")] == 4  # " the"
  # pretrax trains without SentencePiece's dummy prefix, so the count is exact.
  assert not tok.adds_dummy_prefix
  for text in [shakespeare[-HELD_OUT_BYTES:], MULTILINGUAL, AWKWARD, " leading space", "x", ""]:
    assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_dummy_prefix_of_other_models_is_one_more_byte(tmp_path):
  # SentencePiece's defaults prepend a "▁" to every non-empty text, which its pieces then cover:
  # encode(text) stands for " " + text, one byte more than the text itself.
  prefix = str(tmp_path / "dummy")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(["the quick brown fox jumps over the lazy dog",
                              "pack my box with five dozen liquor jugs"] * 20),
      model_prefix=prefix, vocab_size=40, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      control_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2)
  tok = tokenizers.SentencePieceTokenizer(prefix + ".model")
  assert tok.adds_dummy_prefix and tok.describe()["adds_dummy_prefix"]
  ids = tok.encode("the lazy fox")
  assert tok.token_byte_lengths()[ids].sum() == len("the lazy fox") + 1
  assert tok.decode(ids) == "the lazy fox"


@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_trained_word_starts_split_text_into_words(trained, model_type):
  tok = trained[model_type]
  # "ठ" and "à" fall back to bytes (E0 A4 A0, C3 A0): 0xA0 in them is no space.
  for text in ["the king hath sent for thee", "O Romeo,\nwherefore art thou", "héllo 世界 🙂",
               "  indented\tand  spaced out \n", "xठy là-bas"]:
    ids = tok.encode(text)
    starts = np.flatnonzero(tok.word_starts(ids))
    words = [tok.decode(group) for group in np.split(ids, starts[1:])]
    assert [w.strip() for w in words] == text.split()
  ids = np.concatenate([[CLS_ID], tok.encode("a b"), [SEP_ID], tok.encode("c")])
  starts = tok.word_starts(ids)
  assert not starts[0] and not starts[-2] and starts.sum() == 3


@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_training_is_deterministic(trained, shakespeare, tmp_path, model_type):
  again = tokenizers.train_sentencepiece(
      shakespeare[:TRAIN_BYTES].split("\n\n"), str(tmp_path / "again"), vocab_size=1000,
      model_type=model_type)
  for suffix in [".model", ".vocab"]:
    with open(trained[model_type].model_path[:-len(".model")] + suffix, "rb") as f:
      first = f.read()
    with open(str(tmp_path / "again") + suffix, "rb") as f:
      assert f.read() == first


def test_save_and_load_from_directory(trained, shakespeare, tmp_path):
  text = shakespeare[-HELD_OUT_BYTES:] + MULTILINGUAL
  for tok in [tokenizers.ByteTokenizer(), trained["unigram"], trained["bpe"]]:
    directory = tmp_path / tok.kind / str(tok.vocab_size) / os.path.basename(getattr(tok, "model_path", "b"))
    path = tok.save(str(directory))
    assert os.listdir(directory) == [os.path.basename(path)]  # no temporary file left behind
    loaded = tokenizers.load_from_directory(str(directory))
    assert type(loaded) is type(tok) and loaded.describe() == tok.describe()
    np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))
    np.testing.assert_array_equal(loaded.token_byte_lengths(), tok.token_byte_lengths())
    if tok.kind == "sentencepiece":
      assert os.path.basename(path) == "tokenizer.model"
      with open(path, "rb") as saved, open(tok.model_path, "rb") as original:
        assert saved.read() == original.read()
    else:
      assert os.path.basename(path) == "tokenizer.json"
      with open(path) as f:
        assert json.load(f) == {"kind": "byte", "vocab_size": 263, "byte_offset": 7,
                                "special_tokens": dict(zip(SPECIAL_TOKENS, range(7)))}


def test_load_tokenizer(trained, tmp_path):
  assert isinstance(tokenizers.load_tokenizer("byte"), tokenizers.ByteTokenizer)
  tok = tokenizers.load_tokenizer(trained["bpe"].model_path)
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  np.testing.assert_array_equal(tok.encode("my lord"), trained["bpe"].encode("my lord"))
  missing = str(tmp_path / "nope.model")
  with pytest.raises(ValueError, match=re.escape(missing) + ".*byte \\| PATH.model \\| "
                     "PATH/tokenizer.json .*\\| train"):
    tokenizers.load_tokenizer(missing)
  missing_json = str(tmp_path / "nope" / "tokenizer.json")
  with pytest.raises(ValueError, match="no Hugging Face tokenizer at " + re.escape(repr(missing_json))):
    tokenizers.load_tokenizer(missing_json)
  with pytest.raises(ValueError, match="train_sentencepiece"):
    tokenizers.load_tokenizer("train")


def test_loading_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "missing.model")
  with pytest.raises(ValueError, match=re.escape(missing)):
    tokenizers.SentencePieceTokenizer(missing)
  not_a_model = tmp_path / "notes.model"
  not_a_model.write_text("this is not a protobuf\n" * 10)
  with pytest.raises(ValueError, match=re.escape(str(not_a_model)) + ".*not a SentencePiece model"):
    tokenizers.SentencePieceTokenizer(str(not_a_model))
  with pytest.raises(ValueError, match="holds no tokenizer"):
    tokenizers.load_from_directory(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "byte", "vocab_size": 300}))
  with pytest.raises(ValueError, match="'vocab_size' is 300, expected 263"):
    tokenizers.load_from_directory(str(tmp_path))


def test_model_with_other_special_ids_is_rejected(tmp_path):
  # SentencePiece's own defaults: <unk>=0, <s>=1, </s>=2, no <pad>.
  prefix = str(tmp_path / "default_ids")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 20),
      model_prefix=prefix, vocab_size=30, minloglevel=2)
  expected = re.escape(prefix + ".model") + ".*id 0 is '<unk>' \\(expected '<pad>'\\)"
  with pytest.raises(ValueError, match=expected):
    tokenizers.SentencePieceTokenizer(prefix + ".model")


def test_training_errors(tmp_path):
  prefix = str(tmp_path / "sub" / "spm")
  for texts in [[], ["", "\n\n", ""]]:
    with pytest.raises(ValueError, match="empty corpus"):
      tokenizers.train_sentencepiece(texts, prefix, vocab_size=300)
  with pytest.raises(ValueError, match="unigram \\| bpe"):
    tokenizers.train_sentencepiece(["some text"], prefix, vocab_size=300, model_type="wordpiece")
  with pytest.raises(TypeError, match="not one str"):
    tokenizers.train_sentencepiece("a corpus in one string", prefix, vocab_size=300)
  with pytest.raises(TypeError, match="document 1 is a int"):  # raised mid-training, not wrapped
    tokenizers.train_sentencepiece(["fine text", 42], prefix, vocab_size=300)
  assert not os.path.exists(prefix + ".model")


@pytest.mark.parametrize("model_type", tokenizers.MODEL_TYPES)
def test_vocab_size_must_fit_the_corpus(tmp_path, model_type):
  tiny = ["the quick brown fox jumps over the lazy dog"] * 5
  prefix = str(tmp_path / "tiny")
  with pytest.raises(ValueError, match="too small for vocab_size=5000") as error:
    tokenizers.train_sentencepiece(tiny, prefix, vocab_size=5000, model_type=model_type)
  largest = int(re.search(r"vocab_size <= (\d+)", str(error.value)).group(1))
  # 7 specials + 256 byte pieces + the 27 characters of the text, then merges.
  assert 7 + 256 + len(set(tiny[0])) < largest < 5000
  tok = tokenizers.train_sentencepiece(tiny, prefix, vocab_size=largest, model_type=model_type)
  assert tok.vocab_size == largest and tok.decode(tok.encode(tiny[0])) == tiny[0]
  with pytest.raises(ValueError, match="vocab_size=100 is too small.*at least 290"):
    tokenizers.train_sentencepiece(tiny, prefix, vocab_size=100, model_type=model_type)


def test_long_lines_are_split_not_dropped(shakespeare, tmp_path):
  # One 40 KB line: SentencePiece drops sentences over 4192 bytes, so unsplit it would train on nothing.
  line = shakespeare[:40_000].replace("\n", " ")
  tok = tokenizers.train_sentencepiece([line], str(tmp_path / "long"), vocab_size=400)
  raw = sentencepiece.SentencePieceProcessor(model_file=tok.model_path)
  assert raw.piece_to_id("\u2581the") != UNK_ID
  for text in [line, "世" * 3000, "ab " * 1500 + "é" * 2000]:
    chunks = list(tokenizers._split_line(text, 4192))
    assert "".join(chunks) == text and len(chunks) > 1
    assert all(0 < len(c.encode("utf-8")) <= 4192 for c in chunks)
  assert list(tokenizers._split_line("short", 4192)) == ["short"]


@pytest.mark.parametrize("kind", ["byte", *tokenizers.MODEL_TYPES])
def test_batch_encodings_equal_one_text_at_a_time(trained, kind):
  tok = tokenizers.ByteTokenizer() if kind == "byte" else trained[kind]
  texts = [MULTILINGUAL, "", AWKWARD, " x", "to be"]
  want = [tok.encode(t) for t in texts]
  for got, expected in zip(tok.encode_batch(texts), want, strict=True):
    np.testing.assert_array_equal(got, expected)
  ids, lengths = tok.encode_joined(texts)
  assert ids.dtype == np.int32 and lengths.tolist() == [len(w) for w in want]
  np.testing.assert_array_equal(ids, np.concatenate(want))
  assert tok.encode_batch([]) == [] and tok.encode_joined([])[1].tolist() == []
