"""GPT-1's task formats in fine-tuning (config.finetune.format): entailment, similarity, multiple
choice. Here: reading their JSONL fields, framing their sequences, their errors, and the model's
order invariance for similarity. Through the trainer (learning a multiple-choice task, each
format resumed exactly, pretrax eval): tests/test_finetune.py, which has the pretrained runs.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.data import classification, tokenizers
from pretrax.modeling.classifier import Classifier
from pretrax.training import config as config_lib
from pretrax.training.config import ConfigError


def _write_jsonl(path, records) -> str:
  path.write_text("".join(json.dumps(record) + "\n" for record in records))
  return str(path)


# --------------------------------------------------------------------------------------------
# Reading each format.


def test_formats_read_their_fields_and_frame_their_sequences(tmp_path):
  tok = tokenizers.load_tokenizer("byte")
  nli = _write_jsonl(tmp_path / "nli.jsonl", [
      {"premise": "a cat sat", "hypothesis": "a cat", "label": "entail"},
      {"text": "it rains", "text_b": "it is dry", "label": "contradict"}])
  ex = classification.read_jsonl(nli, format="entailment")
  assert [(e.text, e.text_b) for e in ex] == [("a cat sat", "a cat"), ("it rains", "it is dry")]
  arrays, _ = classification.encode_examples(tok, ex, family="gpt", seq_len=24,
                                             format="entailment")
  assert arrays["input_ids"].shape == (2, 1, 24)  # <s> premise [SEP] hypothesis </s>
  assert list(arrays["input_ids"][1, 0, :20]) == [tok.bos_id, *tok.encode("it rains"),
                                                  tok.sep_id, *tok.encode("it is dry"),
                                                  tok.eos_id]

  sim = [classification.Example("ab", "xyz", 0, "f:1")]
  gpt, _ = classification.encode_examples(tok, sim, family="gpt", seq_len=10, format="similarity")
  a, b = tok.encode("ab"), tok.encode("xyz")
  assert gpt["input_ids"].shape == (1, 2, 10)  # both orderings
  assert list(gpt["input_ids"][0, 0, :8]) == [tok.bos_id, *a, tok.sep_id, *b, tok.eos_id]
  assert list(gpt["input_ids"][0, 1, :8]) == [tok.bos_id, *b, tok.sep_id, *a, tok.eos_id]
  bert, _ = classification.encode_examples(tok, sim, family="bert", seq_len=10,
                                           format="similarity")
  assert bert["input_ids"].shape == (1, 1, 10)  # BERT: the pair as classify reads it
  assert list(bert["token_type_ids"][0, 0]) == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]

  mc = _write_jsonl(tmp_path / "mc.jsonl", [{"context": "q", "choices": ["yes", "no", "hm"],
                                             "label": 2}])
  ex = classification.read_jsonl(mc, format="multiple_choice")
  assert (ex[0].text, ex[0].choices, ex[0].label) == ("q", ["yes", "no", "hm"], 2)
  arrays, _ = classification.encode_examples(tok, ex, family="bert", seq_len=8,
                                             format="multiple_choice")
  assert arrays["input_ids"].shape == (1, 3, 8)
  for i, choice in enumerate(["yes", "no", "hm"]):  # [CLS] context [SEP] choice_i [SEP]
    ids, _, _ = classification.frame(tok, "bert", tok.encode("q"), tok.encode(choice), 8)
    np.testing.assert_array_equal(arrays["input_ids"][0, i, :len(ids)], ids)


def test_bad_format_fields_are_errors_naming_file_line_and_field(tmp_path):
  cases = [("entailment", {"premise": "p", "label": 0}, r":1: missing field 'hypothesis'"),
           ("entailment", {"text": "p", "label": 0}, r":1: missing field 'text_b'"),
           ("similarity", {"text": "p", "label": 0}, r":1: missing field 'text_b'"),
           ("multiple_choice", {"choices": ["a", "b"], "label": 0},
            r":1: missing field 'context'"),
           ("multiple_choice", {"context": "c", "choices": ["a", "b"]},
            r":1: missing field 'label'"),
           ("multiple_choice", {"context": "c", "choices": ["a", "b"], "label": 2},
            r":1: label 2 must be the index of the correct choice, an int in 0..1"),
           ("multiple_choice", {"context": "c", "choices": "ab", "label": 0},
            r":1: field 'choices' must be a list of at least 2 strings")]
  for i, (format, record, match) in enumerate(cases):
    path = _write_jsonl(tmp_path / f"{i}.jsonl", [record])
    with pytest.raises(ValueError, match=f"{path}{match}.*format={format}" if "missing" in match
                       else f"{path}{match}"):
      classification.read_jsonl(path, format=format)
  examples = classification.read_jsonl(_write_jsonl(tmp_path / "mc.jsonl", [
      {"context": "c", "choices": ["a", "b", "c", "d"], "label": 0},
      {"context": "c", "choices": ["a", "b", "c"], "label": 1}]), format="multiple_choice")
  with pytest.raises(ValueError, match=r"mc.jsonl:2: 3 choices, but this run has 4 \(the first"):
    classification.check_choices(examples, 4, "the first training example")
  with pytest.raises(ValueError, match=r"format=multiple_choice reads JSONL files"):
    classification.read_examples("tfds:glue/sst2", default_split="train",
                                 format="multiple_choice")

  with pytest.raises(ConfigError, match=r"config.finetune.format='ranking' is not a format; "
                                        r"choose one of classify, entailment, similarity, "
                                        r"multiple_choice"):
    config_lib.validate_finetune(config_lib.FinetuneConfig(task="classify", format="ranking"))
  for variant in ("entailment", "similarity", "multiple_choice"):
    assert config_lib.load_preset(f"finetune:{variant}").finetune.format == variant


# --------------------------------------------------------------------------------------------
# The model.


def test_similarity_is_order_invariant_and_each_ordering_differs():
  """GPT similarity adds the final states of (a, b) and (b, a): swapping the texts leaves the
  logits as they are, though a single ordering's logits do change with it."""
  tok = tokenizers.load_tokenizer("byte")
  config = config_lib.load_preset("gpt:tiny").model
  config.num_layers, config.d_model, config.num_heads, config.max_seq_len = 1, 32, 2, 32
  config.vocab_size = tok.vocab_size
  model = Classifier(config, 3, dropout=0.0, rngs=nnx.Rngs(params=0))
  forward = nnx.jit(lambda model, *arrays: model(*arrays))
  a, b = "the quick brown fox", "jumps over it"
  ab, ba = (classification.Example(x, y, 0, "t") for x, y in ((a, b), (b, a)))

  def logits(format):
    arrays, _ = classification.encode_examples(tok, [ab, ba], family="gpt", seq_len=32,
                                               format=format)
    out, lm_logits = forward(model, *(jnp.asarray(arrays[k]) for k in classification.FEATURES))
    assert lm_logits.shape == arrays["input_ids"].shape + (config.vocab_size,)
    return np.asarray(out)

  swapped = logits("similarity")
  assert swapped.shape == (2, 3) and np.abs(swapped[0] - swapped[1]).max() < 1e-6
  one_order = logits("classify")
  assert np.abs(one_order[0] - one_order[1]).max() > 1e-3
