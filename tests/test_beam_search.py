"""Beam search against `transformers`' `generate(num_beams=...)` on exported models, and its
invariants (a row alone equals it in a batch; one beam is greedy decoding)."""

import dataclasses
import json

import numpy as np
import pytest

from pretrax.inference import decoding
from pretrax.interop import export, hf
from pretrax.modeling.config import ModelConfig

VOCAB, TOKENIZER_VOCAB, PAD, BOS, EOS = 64, 60, 0, 2, 3
SPECIAL = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
_SEQ2SEQ = dict(family="encoder_decoder", vocab_size=VOCAB, max_seq_len=48, num_layers=2,
                num_heads=2, d_model=32, d_ff=64, init_std=0.35)
CONFIGS = {
    "gpt": ModelConfig(vocab_size=VOCAB, max_seq_len=48, num_layers=2, num_heads=2, d_model=32,
                       init_std=0.35),
    "bart": ModelConfig(**_SEQ2SEQ, position="learned", norm_position="post", activation="gelu",
                        embed_norm=True, final_logits_bias=True),
    "t5": ModelConfig(**_SEQ2SEQ, position="relative", norm="rmsnorm", norm_eps=1e-6,
                      use_bias=False, attention_scale=False, relative_buckets=16,
                      relative_max_distance=24, activation="geglu", tie_embeddings=False),
}


def _exported(config: ModelConfig, params: dict, folder):
  """The model written as `pretrax export --format=hf` writes it, loaded by transformers."""
  transformers = pytest.importorskip("transformers")
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  safetensors_numpy.save_file(hf.to_hf_state(config, params), str(folder / export.HF_WEIGHTS),
                              metadata={"format": "pt"})
  hf_config = hf.to_hf_config(config, SPECIAL)
  (folder / "config.json").write_text(json.dumps(hf_config))
  cls = getattr(transformers, hf_config["architectures"][0])
  model = cls.from_pretrained(folder).eval()
  # BART's export asks generate to force EOS at the last step; plain beam search here.
  model.generation_config.forced_eos_token_id = None
  return model


def _theirs(model, inputs: np.ndarray, seq2seq: bool, new: int, beam: decoding.Beam, eos: int):
  """transformers' beam search for one input -> (hypotheses without the prompt, cut at EOS;
  their scores)."""
  import torch
  import transformers
  config = transformers.GenerationConfig(
      num_beams=beam.num_beams, length_penalty=beam.length_penalty,
      early_stopping=beam.early_stopping, num_return_sequences=beam.num_return,
      max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=PAD,
      decoder_start_token_id=BOS, forced_eos_token_id=None, forced_bos_token_id=None,
      suppress_tokens=[PAD, *range(TOKENIZER_VOCAB, VOCAB)], output_scores=True,
      return_dict_in_generate=True)
  ids = torch.tensor(inputs[None], dtype=torch.long)
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         generation_config=config)
  skip = 1 if seq2seq else len(inputs)  # the decoder's start token; the prompt
  hypotheses = []
  for row in out.sequences.numpy()[:, skip:]:
    ends = np.flatnonzero(row == eos)
    hypotheses.append(row[:ends[0]] if len(ends) else row)
  return hypotheses, out.sequences_scores.numpy()


SETTINGS = [decoding.Beam(4, 1.0, False, num_return=4), decoding.Beam(3, 0.6, True, num_return=2),
            decoding.Beam(4, 2.0, "never"), decoding.Beam(4, -1.0, False)]


# CI: GPT; the encoder-decoder's cached steps are tested against the full model in
# test_decoding.py and its beams on a trained run in test_generate.py.
@pytest.mark.parametrize("family", ["gpt", pytest.param("bart", marks=pytest.mark.long),
                                    pytest.param("t5", marks=pytest.mark.long)])
def test_beam_search_equals_transformers_generate(family, tmp_path, random_model):
  config = CONFIGS[family]
  model, params = random_model(config, seed=5)
  theirs = _exported(config, params, tmp_path)
  seq2seq = family != "gpt"
  rng = np.random.default_rng(1)
  inputs = [rng.integers(7, TOKENIZER_VOCAB, n).astype(np.int32) for n in (3, 14)]
  decoder = decoding.Decoder(model, start_id=BOS if seq2seq else None)
  greedy = decoding.Sampling(temperature=0.0, vocab_size=TOKENIZER_VOCAB, pad_id=PAD)
  # EOS: a token greedy decoding draws early, so that hypotheses end at EOS too.
  eos = int(decoder(inputs, 4, greedy).tokens[0][3])
  sampling = dataclasses.replace(greedy, eos_id=eos)
  eos_ends = 0
  for beam in SETTINGS:
    new = 12
    ours = decoder.beam_search(inputs, new, beam, sampling)
    for i, source in enumerate(inputs):
      want, want_scores = _theirs(theirs, source, seq2seq, new, beam, eos)
      got = ours.tokens[i * beam.num_return:(i + 1) * beam.num_return]
      for k, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"{beam}, input {i}, hypothesis {k}")
      np.testing.assert_allclose(ours.scores[i * beam.num_return:(i + 1) * beam.num_return],
                                 want_scores, rtol=1e-4, atol=1e-5)
      eos_ends += sum(len(t) < new for t in got)
  assert eos_ends > 0  # some hypotheses ended at EOS, not only at max_new_tokens
