"""Hugging Face tokenizers both ways: exports `AutoTokenizer` loads with pretrax's ids, and
tokenizer.json files (GPT-2 byte-level BPE, WordPiece, SentencePiece-style) read as pretrax
tokenizers that encode as the `tokenizers` library does.

Truths: pretrax's own `encode` (exports), the `tokenizers` library and `transformers` (reading),
`str.encode` (byte counts), and a transformers GPT-2 scoring the same ids (import).
"""

import json
import os
import pickle
import random
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import tokenizers as hf_lib  # the Hugging Face library (pretrax's module is pretrax.data.tokenizers)

from pretrax.data import hf_tokenizer, tokenizers
from pretrax.data.errors import InputError
from pretrax.inference import evaluate, loading
from pretrax.interop import export
from pretrax.training import run_dir
from pretrax.training.config import ConfigError

VARIED = [
    "", "a", "Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\n  x\t\t",
    "héllo wörld café", "日本語のテキスト", "emoji 😀🎉 end", "<s> [MASK] </s> <pad> <unk> [CLS] [SEP]",
    "<s>[MASK]</s>", "<0x41> ▁ literal ▁▁", "a" * 40 + "     " + "b c d", "mixed 12345 !@#$%^&*()",
    "x\u00a0y\u3000z",
]
WORDS = ("the quick brown fox jumps over a lazy dog while def return if else for in "
         "value data 0 1 2 42 , . ; : ( ) = + é ü").split()


def _docs(n: int, seed: int = 0) -> list[str]:
  """Small generated documents: words, punctuation, indentation, tabs and newlines."""
  rng = random.Random(seed)
  return ["\n".join(" " * rng.choice((0, 0, 2, 4)) + " ".join(rng.choice(WORDS) for _ in range(
      rng.randint(3, 12))) + rng.choice(("", "", "\t")) for _ in range(rng.randint(2, 8)))
          for _ in range(n)]


@pytest.fixture(scope="module")
def pretrax_tokenizers(tmp_path_factory):
  root = tmp_path_factory.mktemp("spm")
  docs = _docs(300)
  return {"byte": tokenizers.ByteTokenizer(),
          **{kind: tokenizers.train_sentencepiece(docs, str(root / kind), vocab_size=360,
                                                  model_type=kind)
             for kind in ("unigram", "bpe")}}


# --------------------------------------------------------------------------------------------
# Writing: pretrax tokenizers as files AutoTokenizer loads.


@pytest.mark.parametrize("kind", ["byte", "unigram", "bpe"])
def test_exported_tokenizer_encodes_like_pretrax(pretrax_tokenizers, kind, tmp_path):
  tok = pretrax_tokenizers[kind]
  hf_tokenizer.write_hf_tokenizer(tok, str(tmp_path), "gpt")
  auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert (auto.pad_token, auto.unk_token, auto.bos_token, auto.eos_token) == \
      ("<pad>", "<unk>", "<s>", "</s>")
  assert (auto.pad_token_id, auto.unk_token_id, auto.bos_token_id, auto.eos_token_id,
          auto.mask_token_id) == (0, 1, 2, 3, 6)
  for text in VARIED + _docs(30, seed=1):
    ids = tok.encode(text).tolist()
    assert auto.encode(text, add_special_tokens=False) == ids, (kind, text)
    assert auto(text)["input_ids"] == [2] + ids, (kind, text)  # BOS first, as pretrax scores
    assert auto.decode(ids) == tok.decode(ids)
    assert auto.decode([2] + ids, skip_special_tokens=True) == tok.decode(ids)
    if kind == "byte" or "▁" not in text:  # SentencePiece decodes a literal "▁" as a space
      assert auto.decode(ids) == text

  back = hf_tokenizer.HuggingFaceTokenizer(str(tmp_path))  # and read as a pretrax tokenizer
  assert back.vocab_size == tok.vocab_size and back.special_ids == tok.special_ids
  assert back.special_token_ids() == tok.special_token_ids()
  np.testing.assert_array_equal(back.token_byte_lengths(), tok.token_byte_lengths())
  assert back.token_bytes() == tok.token_bytes()
  for text in VARIED:
    np.testing.assert_array_equal(back.encode(text), tok.encode(text))
    np.testing.assert_array_equal(back.word_starts(tok.encode(text)), tok.word_starts(tok.encode(text)))


def test_bert_export_adds_cls_and_sep(pretrax_tokenizers, tmp_path):
  hf_tokenizer.write_hf_tokenizer(pretrax_tokenizers["unigram"], str(tmp_path), "bert")
  auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ids = pretrax_tokenizers["unigram"].encode("the fox").tolist()
  assert auto("the fox")["input_ids"] == [4, *ids, 5]
  assert (auto.cls_token_id, auto.sep_token_id, auto.mask_token_id) == (4, 5, 6)


# --------------------------------------------------------------------------------------------
# Reading tokenizer.json files.


def _wordpiece(folder) -> hf_lib.Tokenizer:
  tok = hf_lib.Tokenizer(hf_lib.models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = hf_lib.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = hf_lib.pre_tokenizers.BertPreTokenizer()
  tok.decoder = hf_lib.decoders.WordPiece(prefix="##")
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  tok.train_from_iterator(_docs(200), hf_lib.trainers.WordPieceTrainer(
      vocab_size=300, special_tokens=specials))
  tok.post_processor = hf_lib.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.save(str(folder / "tokenizer.json"))  # no config files: roles by the usual names
  return tok


def test_wordpiece_reads_like_tokenizers_with_documented_byte_counts(tmp_path):
  raw = _wordpiece(tmp_path)
  tok = tokenizers.load_tokenizer(str(tmp_path / "tokenizer.json"))
  assert tok.kind == "huggingface" and tok.style == "wordpiece"
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  with pytest.raises(InputError, match="bos token.*tokenizer.json has none"):
    tok.bos_id
  lengths, checked = tok.token_byte_lengths(), 0
  for text in ["The quick brown fox, jumps!", "  value = data(42);\n\tif x", "Über café"] + \
      _docs(20, seed=2):
    ids = tok.encode(text)
    assert ids.tolist() == raw.encode(text, add_special_tokens=False).ids
    # Documented: each word (as normalizer and pre-tokenizer give it) after one space.
    words = [w for w, _ in raw.pre_tokenizer.pre_tokenize_str(raw.normalizer.normalize_str(text))]
    if tok.unk_id in ids:  # a word it cannot spell: [UNK], special, 0 bytes
      continue
    checked += 1
    assert lengths[ids].sum() == len("".join(" " + w for w in words).encode())
    assert b"".join(tok.token_bytes()[i] for i in ids) == "".join(" " + w for w in words).encode()
    assert tok.word_starts(ids).sum() == len(words)  # "##" pieces continue a word
  assert checked >= 20
  # "[MASK]" in a text is text; the special id comes only from the template.
  assert tok.mask_id not in tok.encode("a [MASK] b").tolist()
  assert tok.adds_dummy_prefix


def test_sentencepiece_style_file_reads_like_tokenizers(tmp_path):
  raw = hf_lib.Tokenizer(hf_lib.models.Unigram())
  raw.pre_tokenizer = hf_lib.pre_tokenizers.Metaspace(prepend_scheme="always")
  raw.decoder = hf_lib.decoders.Metaspace(prepend_scheme="always")
  raw.train_from_iterator(_docs(200), hf_lib.trainers.UnigramTrainer(
      vocab_size=200, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], unk_token="<unk>"))
  raw.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": "<pad>",
       "unk_token": "<unk>"}))
  tok = tokenizers.load_tokenizer(str(tmp_path))
  assert tok.style == "sentencepiece" and tok.adds_dummy_prefix
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  for text in ["the quick fox", "  value = data(42);\n\tif x", "a  b"] + _docs(20, seed=3):
    ids = tok.encode(text)
    assert ids.tolist() == raw.encode(text, add_special_tokens=False).ids
    # Metaspace prepends "▁" to a text that does not start with a space.
    spelled = text if text.startswith(" ") else " " + text
    assert b"".join(tok.token_bytes()[i] for i in ids) == spelled.encode()
    assert tok.token_byte_lengths()[ids].sum() == len(spelled.encode())
    assert tok.decode(ids) == raw.decode(ids.tolist())


# --------------------------------------------------------------------------------------------
# GPT-2 with its own byte-level BPE: import, score, export.


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
  """A GPT-2 folder (random weights) with a byte-level BPE tokenizer trained here."""
  root = tmp_path_factory.mktemp("gpt2_bpe")
  raw = hf_lib.Tokenizer(hf_lib.models.BPE())
  raw.pre_tokenizer = hf_lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = hf_lib.decoders.ByteLevel()
  raw.train_from_iterator(_docs(300), hf_lib.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>"],
      initial_alphabet=hf_lib.pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.GPT2TokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>")
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2,
                                   n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                   bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(root / "hf")
  fast.save_pretrained(root / "hf")
  return root, model, fast, raw


def test_imported_gpt2_keeps_its_tokenizer_and_scores_like_transformers(gpt2_folder):
  root, model, fast, raw = gpt2_folder
  result = export.import_hf(str(root / "hf"), str(root / "run"))
  assert result["tokenizer"] == "huggingface"
  run = loading.load_run(str(root / "run"))
  tok = run.tokenizer
  eot = fast.convert_tokens_to_ids("<|endoftext|>")
  assert tok.bos_id == tok.eos_id == eot and tok.pad_id == -1 and tok.style == "byte_level"
  assert run.config.data.tokenizer == os.path.abspath(root / "run" / tokenizers.HF_DIRNAME)

  text = "The quick fox, café 😀\n\tjumps  over"
  ids = tok.encode(text).tolist()
  assert ids == fast.encode(text, add_special_tokens=False) == raw.encode(text).ids
  assert tok.decode(ids) == text
  assert len(ids) + 1 <= run.config.data.seq_len  # one window: the whole text, one forward pass
  ours = evaluate.score_text(str(root / "run"), text)
  with torch.no_grad():
    logits = model(torch.tensor([[eot] + ids])).logits.double()[0, :-1]
  nll = -torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)]
  assert ours["tokens"] == len(ids)
  np.testing.assert_allclose(ours["loss"], float(nll.mean()), rtol=1e-4)
  assert ours["bytes"] == len(text.encode("utf-8"))  # byte-level BPE: exact UTF-8 bytes
  np.testing.assert_allclose(ours["bits_per_byte"],
                             float(nll.sum()) / np.log(2) / len(text.encode()), rtol=1e-4)
  with pytest.raises(InputError, match="mask token"):
    tok.mask_id

  # `pretrax train` on the run keeps its tokenizer, and refuses another one for its checkpoints.
  assert run_dir.prepare_tokenizer(run.config, str(root / "run")).describe() == tok.describe()
  run.config.data.tokenizer = "byte"
  with pytest.raises(ConfigError, match=re.escape(
      f"--config.data.tokenizer={root / 'run' / tokenizers.HF_DIRNAME}")):
    run_dir.prepare_tokenizer(run.config, str(root / "run"))

  # Exported again, the folder carries the original tokenizer files.
  export.export_hf(str(root / "run"), str(root / "out"))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (root / "out" / name).read_bytes() == (root / "hf" / name).read_bytes()
  hf_config = json.loads((root / "out" / "config.json").read_text())
  assert hf_config["bos_token_id"] == hf_config["eos_token_id"] == eot
  assert hf_config["pad_token_id"] is None
  assert transformers.AutoTokenizer.from_pretrained(root / "out").encode(text) == ids
  export.import_hf(str(root / "out"), str(root / "back"))
  assert loading.load_run(str(root / "back")).tokenizer.describe() == tok.describe()


def test_gpt2_vocab_and_merges_become_a_tokenizer(gpt2_folder, tmp_path):
  """A folder with GPT-2's vocab.json + merges.txt and no tokenizer.json."""
  root, _, fast, raw = gpt2_folder
  plain = tmp_path / "plain"
  plain.mkdir()
  for name in ("config.json", export.HF_WEIGHTS):
    shutil.copy(root / "hf" / name, plain / name)
  raw.model.save(str(plain))  # vocab.json, merges.txt
  export.import_hf(str(plain), str(tmp_path / "run"))
  tok = tokenizers.load_from_directory(str(tmp_path / "run"))
  for text in VARIED[1:8]:
    assert tok.encode(text).tolist() == fast.encode(text, add_special_tokens=False), text
  assert tok.bos_id == fast.convert_tokens_to_ids("<|endoftext|>")


def test_end_to_end_byte_export_loads_in_auto_tokenizer(gpt2_folder, tmp_path):
  """A run (a random GPT-2 imported with the byte tokenizer) -> export_hf -> AutoTokenizer."""
  root, _, _, _ = gpt2_folder
  small = tmp_path / "small"
  config = transformers.GPT2Config(vocab_size=384, n_positions=32, n_embd=16, n_layer=1, n_head=2)
  transformers.GPT2LMHeadModel(config).save_pretrained(small)
  export.import_hf(str(small), str(tmp_path / "run"), tokenizer="byte")
  export.export_hf(str(tmp_path / "run"), str(tmp_path / "out"))
  auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  byte = tokenizers.ByteTokenizer()
  for text in VARIED:
    assert auto(text)["input_ids"] == [2] + byte.encode(text).tolist()
  hf_config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert [hf_config[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")] == \
      [auto.pad_token_id, auto.bos_token_id, auto.eos_token_id] == [0, 2, 3]


# --------------------------------------------------------------------------------------------
# Run directories and bad input.


def test_run_directory_saves_and_loads_the_hf_tokenizer(gpt2_folder, tmp_path):
  root, _, _, _ = gpt2_folder
  tok = tokenizers.load_tokenizer(str(root / "hf"))
  tok.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path / tokenizers.HF_DIRNAME)) == ["tokenizer.json",
                                                                 "tokenizer_config.json"]
  back = tokenizers.load_from_directory(str(tmp_path))
  assert back.describe() == tok.describe()
  assert tokenizers.load_tokenizer(tokenizers.saved_spec(tok, str(tmp_path))).describe() == \
      tok.describe()
  # Worker processes get it pickled: "<|endoftext|>" in a text stays text there too.
  unpickled = pickle.loads(pickle.dumps(tok))
  for text in ["a <|endoftext|> b", "the fox"]:
    assert unpickled.encode(text).tolist() == tok.encode(text).tolist()
  assert tok.bos_id not in tok.encode("<|endoftext|>").tolist()
  tokenizers.ByteTokenizer().save(str(tmp_path))  # a second tokenizer: which one is meant?
  with pytest.raises(InputError, match="tokenizer.json and hf_tokenizer"):
    tokenizers.load_from_directory(str(tmp_path))


def test_corrupt_tokenizer_json_is_named(gpt2_folder, tmp_path):
  root, _, _, _ = gpt2_folder
  broken = tmp_path / "broken"
  shutil.copytree(root / "hf", broken)
  (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')
  path = str(broken / "tokenizer.json")
  with pytest.raises(InputError, match=re.escape(path) + ".*not a valid Hugging Face"):
    tokenizers.load_tokenizer(str(broken))
  with pytest.raises(InputError, match=re.escape(path)):
    export.import_hf(str(broken), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  (broken / "tokenizer_config.json").write_text('{"bos_token": "<never>"}')
  (broken / "tokenizer.json").write_bytes((root / "hf" / "tokenizer.json").read_bytes())
  with pytest.raises(InputError, match="bos_token '<never>'"):
    tokenizers.load_tokenizer(str(broken))


def test_imported_gpt2_pretrains_on_with_its_own_tokenizer(gpt2_folder, tmp_path):
  """`pretrax train` continues an imported GPT-2 on a new corpus with GPT-2's own tokenizer,
  and the trained run scores few-shot requests."""
  from pretrax.inference import fewshot
  from pretrax.training import trainer
  root, *_ = gpt2_folder
  workdir = str(tmp_path / "run")
  export.import_hf(str(root / "hf"), workdir)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n\n".join(_docs(200, seed=3)))
  config = loading.load_run(workdir).config
  config.data.source, config.data.data_dir = f"text:{corpus}", str(tmp_path / "tfds")
  config.train.steps, config.train.batch_size, config.train.eval_every = 2, 8, 0
  config.train.log_every, config.checkpoint.every = 1, 2
  trainer.train(config, workdir)
  run = loading.load_run(workdir)
  assert run.step == 2 and run.tokenizer.kind == "huggingface"
  lls, _ = fewshot.Scorer(run).loglikelihood([("The quick", " fox"), ("The quick", " dog")])
  assert np.all(np.isfinite(lls)) and np.all(lls < 0)
