"""Supervised pairs (data.objective=seq2seq): JSONL reading and its errors, packing several pairs
to a row, and packed rows computing what their pairs compute alone."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.data import global_batches, seq2seq_pairs, tokenizers
from pretrax.data.errors import InputError
from pretrax.modeling import models
from pretrax.modeling.config import ModelConfig

S = 160  # two or three Multi30k pairs to a row


@pytest.fixture(scope="module")
def pairs(repo_dir) -> list[tuple[str, str]]:
  path = f"{repo_dir}/../shared/data/multi30k/val.en-de.jsonl"
  return seq2seq_pairs.read_pairs(path)[:40]


@pytest.fixture(scope="module")
def tok():
  return tokenizers.ByteTokenizer()


def _features(rows, tok):
  store_rows = rows.read(np.arange(len(rows)))
  return seq2seq_pairs.PairRows(s=rows.s, bos_id=tok.bos_id)(store_rows, np.arange(len(rows)))


def test_pairs_are_packed_in_order_and_read_back_exactly(pairs, tok):
  rows = seq2seq_pairs.PackedPairs(pairs, tok, s=S, t=S, name="val")
  assert len(rows) < len(pairs)  # several pairs to a row
  f = _features(rows, tok)
  got = []
  for r in range(len(rows)):
    for k in range(1, f["encoder_segment_ids"][r].max() + 1):
      enc = f["encoder_inputs"][r][f["encoder_segment_ids"][r] == k]
      dec_at = f["decoder_segment_ids"][r] == k
      targets, inputs = f["decoder_targets"][r][dec_at], f["decoder_inputs"][r][dec_at]
      np.testing.assert_array_equal(f["encoder_positions"][r][f["encoder_segment_ids"][r] == k],
                                    np.arange(len(enc)))
      np.testing.assert_array_equal(f["decoder_positions"][r][dec_at], np.arange(len(targets)))
      np.testing.assert_array_equal(inputs, np.r_[tok.bos_id, targets[:-1]])  # restarts at <s>
      assert enc[-1] == targets[-1] == tok.eos_id
      got.append((tok.decode(enc), tok.decode(targets)))
  want = [(a.encode()[:S - 1].decode(errors="ignore"), b.encode()[:S - 1].decode(errors="ignore"))
          for a, b in pairs]
  assert got == want
  assert (f["loss_weights"] == (f["decoder_segment_ids"] > 0)).all()
  assert not f["decoder_inputs"][f["decoder_segment_ids"] == 0].any()
  # A side longer than its room keeps its first S - 1 tokens and </s>.
  long = seq2seq_pairs.PackedPairs([("x" * 30, "y" * 5)], tok, s=16, t=8, name="long")
  assert tok.decode(long.tokens[0, :15]) == "x" * 15 and long.tokens[0, 15] == tok.eos_id
  assert long.truncated == 1


def test_a_packed_row_computes_what_its_pairs_compute_alone(pairs, tok):
  config = ModelConfig(family="encoder_decoder", vocab_size=384, num_layers=1, num_heads=2,
                       d_model=32, max_seq_len=S, position="learned", norm_position="post",
                       activation="gelu", embed_norm=True, final_logits_bias=True)
  model = models.build(config, nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)

  @jax.jit
  def logits(state, f):
    return nnx.merge(graphdef, state)(
        f["encoder_inputs"], f["decoder_inputs"], f["encoder_segment_ids"],
        f["decoder_segment_ids"], f["encoder_positions"], f["decoder_positions"])

  packed = _features(seq2seq_pairs.PackedPairs(pairs[:6], tok, s=S, t=S, name="p"), tok)
  assert packed["encoder_segment_ids"][0].max() >= 2
  packed_logits = logits(state, {k: jnp.asarray(v[:1]) for k, v in packed.items()})[0]
  for k in range(1, packed["encoder_segment_ids"][0].max() + 1):
    alone = _features(seq2seq_pairs.PackedPairs(pairs[k - 1:k], tok, s=S, t=S, name="p"), tok)
    alone_logits = logits(state, {key: jnp.asarray(v) for key, v in alone.items()})[0]
    at = packed["decoder_segment_ids"][0] == k
    np.testing.assert_allclose(packed_logits[at], alone_logits[:at.sum()], atol=2e-5, rtol=2e-5)


def test_global_batches_of_pairs_resume_from_a_position(pairs, tok, assert_batches_equal):
  rows = seq2seq_pairs.PackedPairs(pairs, tok, s=S, t=S, name="val")

  def reader():
    return global_batches.GlobalBatches(rows, seq2seq_pairs.PairRows(s=S, bos_id=tok.bos_id),
                                        global_batch_size=4, rows=slice(0, 4), seed=1,
                                        shuffle=True, repeat=True)

  full = [b for b, _ in zip(reader(), range(8))]
  resumed = reader()
  resumed.set_position({"next_row": 12, "dataset": rows.name})
  assert_batches_equal([b for b, _ in zip(resumed, range(5))], full[3:])


def test_bad_pair_files_name_the_line(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text(json.dumps({"source": "a", "target": "b"}) + "\n\n" +
                  json.dumps({"source": "a"}) + "\n")
  with pytest.raises(InputError, match=f"{path}:3: field 'target' must be a string"):
    seq2seq_pairs.read_pairs(str(path))
  path.write_text("{not json\n")
  with pytest.raises(InputError, match=f"{path}:1: invalid JSON"):
    seq2seq_pairs.read_pairs(str(path))
  with pytest.raises(InputError, match="config.data.train='missing.jsonl': no such file"):
    seq2seq_pairs.read_pairs("missing.jsonl")


def test_tfds_pairs_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    # ted_hrlr_translate/pt_to_en's supervised keys are ("pt", "en").
    pairs = seq2seq_pairs.read_pairs("tfds:ted_hrlr_translate/pt_to_en")
    records = tfds.data_source("ted_hrlr_translate/pt_to_en", split="train",
                               builder_kwargs={"file_format": "array_record"})
    assert pairs == [(records[i]["pt"], records[i]["en"]) for i in range(5)]
    swapped = seq2seq_pairs.read_pairs("tfds:ted_hrlr_translate/pt_to_en:validation",
                                       features="en,pt")
    assert len(swapped) == 5 and all(isinstance(a, str) for pair in swapped for a in pair)
    with pytest.raises(InputError, match="config.data.pair_features=SOURCE,TARGET"):
      seq2seq_pairs.read_pairs("tfds:ted_hrlr_translate/pt_to_en", features="en,fr")


# --------------------------------------------------------------------------------------------
# Pairs for a decoder-only model (data/decoder_pairs.py).


def test_decoder_only_sequences_weigh_the_targets_only(pairs, tok):
  from pretrax.data import decoder_pairs
  t = 320  # two or three pairs of bytes to a row
  rows = decoder_pairs.PackedSequences(pairs, tok, t=t, name="val")
  assert len(rows) < len(pairs)  # several pairs to a row
  f = decoder_pairs.SequenceRows(sep_id=tok.sep_id)(rows.read(np.arange(len(rows))),
                                                     np.arange(len(rows)))
  got = []
  for r in range(len(rows)):
    for k in range(1, rows.segments[r].max() + 1):
      seq = rows.tokens[r][rows.segments[r] == k]  # [bos] source [sep] target [eos]
      assert seq[0] == tok.bos_id and seq[-1] == tok.eos_id
      sep = int(np.flatnonzero(seq == tok.sep_id)[0])
      # The pair's inputs: all of it (EOS's target is the next pair's BOS: no loss), or all but
      # EOS at the end of a row.
      at = np.flatnonzero(f["segment_ids"][r] == k)
      assert len(at) in (len(seq), len(seq) - 1)
      np.testing.assert_array_equal(f["inputs"][r][at], seq[:len(at)])
      np.testing.assert_array_equal(f["positions"][r][at], np.arange(len(at)))
      # the loss predicts the target and EOS, never the source, the separator or the next pair
      slot = np.arange(len(at))
      np.testing.assert_array_equal(f["loss_weights"][r][at], (slot >= sep) & (slot < len(seq) - 1))
      weighted = f["targets"][r][at][f["loss_weights"][r][at] > 0]
      np.testing.assert_array_equal(weighted, seq[sep + 1:])
      got.append((tok.decode(seq[1:sep]), tok.decode(seq[sep + 1:])))
  want = []
  for a, b in pairs:  # bytes: the target keeps (t + 1) // 2 - 1, the source what is left
    target = b.encode()[:(t + 1) // 2 - 1]
    source = a.encode()[:t + 1 - (len(target) + 1) - 2]
    want.append((source.decode(errors="ignore"), target.decode(errors="ignore")))
  assert got == want and any(len(b.encode()) > (t + 1) // 2 - 1 for _, b in pairs)
  assert f["loss_weights"][f["segment_ids"] == 0].sum() == 0
  # Too long: the target part keeps (t + 1) // 2 tokens, the source the rest; the prompt for
  # generation cuts the source as the longest target would.
  seq = decoder_pairs.sequence(tok, tok.encode("x" * 30), tok.encode("y" * 30), 15)
  assert len(seq) == 16 and tok.decode(seq) == "x" * 6 + "y" * 7
  prompt = decoder_pairs.prompt(tok, tok.encode("x" * 30), 15)
  np.testing.assert_array_equal(prompt, seq[:8])
