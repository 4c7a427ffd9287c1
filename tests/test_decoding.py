"""KV-cache decoding against full recomputation, batching, stopping, and `pretrax sample`."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.cli import main as cli
from pretrax.inference import decoding, generate
from pretrax.modeling.config import ModelConfig
from pretrax.modeling.gpt import GPT

# init_std 0.5: peaked next-token distributions, so greedy choices are not near-ties.
TINY = ModelConfig(vocab_size=64, max_seq_len=32, num_layers=2, num_heads=2, d_model=32,
                   init_std=0.5)
GREEDY = decoding.Sampling(temperature=0.0, vocab_size=60, pad_id=0)


def _model(**overrides) -> GPT:
  return GPT(dataclasses.replace(TINY, **overrides), rngs=nnx.Rngs(0))


def _prompts(lengths, seed=0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 60, n).astype(np.int32) for n in lengths]


@nnx.jit
def _forward(model, ids_1t):
  return model(ids_1t)


def _full_logits(model, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """[n, V]: for each new token, the logits after the prompt and the tokens before it, from the
  whole sequence without a cache (one causal pass gives every prefix's last logits)."""
  ids = np.concatenate([prompt, tokens[:-1]])
  return np.asarray(_forward(model, jnp.asarray(ids)[None])[0, len(prompt) - 1:])


MIXED, NEARLY_FULL = ([1, 4, 9], 20), ([29, 3], 3)  # prompt lengths, new tokens (context 32)


@pytest.mark.parametrize("overrides,lengths,new", [
    ({}, *MIXED), ({}, *NEARLY_FULL), ({"position": "rope"}, *MIXED),
    ({"position": "rope"}, *NEARLY_FULL), ({"norm_position": "post"}, *MIXED)],
    ids=["learned-mixed", "learned-nearly_full", "rope-mixed", "rope-nearly_full",
         "post_LN-mixed"])
def test_cached_decoding_equals_full_recomputation(overrides, lengths, new):
  model = _model(**overrides)
  prompts = _prompts(lengths)
  out = decoding.decode(model, prompts, new, GREEDY, keep_logits=True)
  strict = 0
  for prompt, tokens, logits in zip(prompts, out.tokens, out.logits, strict=True):
    assert len(tokens) == new and logits.shape == (new, TINY.vocab_size)
    full_nv = _full_logits(model, prompt, tokens)
    # float32 sums in another order: equal to 1e-5 of the logits' scale (~6 here)
    np.testing.assert_allclose(logits, full_nv, rtol=0, atol=1e-5 * np.abs(full_nv).max())
    for i, full_v in enumerate(full_nv):
      allowed = np.asarray(decoding.tokenizer_logits(jnp.asarray(full_v), 60, 0))
      top2 = np.sort(allowed)[-2:]
      if top2[1] - top2[0] > 1e-4:  # not a near-tie: the choice is the recomputed argmax
        assert tokens[i] == np.argmax(allowed), (i, tokens[i], np.argmax(allowed))
        strict += 1
  assert strict >= 0.9 * len(prompts) * new


def test_a_row_does_not_depend_on_the_other_rows():
  model = _model(position="rope")
  sampling = decoding.Sampling(temperature=1.0, top_k=20, vocab_size=60, pad_id=0)
  prompts = _prompts([6, 2, 11], seed=1)
  decoder = decoding.Decoder(model)
  together = decoder(prompts, 12, sampling, seed=3)
  alone = decoder(prompts[:1], 12, sampling, seed=3)
  np.testing.assert_array_equal(together.tokens[0], alone.tokens[0])
  again = decoder(prompts, 12, sampling, seed=3)
  for a, b in zip(together.tokens, again.tokens):
    np.testing.assert_array_equal(a, b)
  other_seed = decoder(prompts, 12, sampling, seed=4)
  assert any(not np.array_equal(a, b) for a, b in zip(together.tokens, other_seed.tokens))
  for tokens in together.tokens:
    assert ((tokens > 0) & (tokens < 60)).all()  # never padding, never a padded vocabulary row


def test_rows_stop_at_eos_and_the_loop_stops_when_all_have():
  model = _model()
  prompts = _prompts([3, 5], seed=2)
  free = decoding.decode(model, prompts, 16, GREEDY)
  eos = int(free.tokens[0][4])
  stopped = decoding.decode(model, prompts, 16, dataclasses.replace(GREEDY, eos_id=eos))
  for before, after in zip(free.tokens, stopped.tokens):
    hits = np.flatnonzero(before == eos)
    n = int(hits[0]) if len(hits) else 16
    np.testing.assert_array_equal(after, before[:n])  # up to, without, the first EOS
  longest = max(int(np.flatnonzero(t == eos)[0]) + 1 if (t == eos).any() else 16
                for t in free.tokens)
  assert stopped.steps == longest


def test_the_loop_compiles_once_for_a_shape():
  decoder = decoding.Decoder(_model())
  decoder(_prompts([4, 7], seed=5), 6, GREEDY)
  assert decoder.compiled._cache_size() == 1  # the prefill and every step: one program
  decoder(_prompts([7, 2], seed=6), 6, GREEDY)  # other prompts, same shapes
  assert decoder.compiled._cache_size() == 1


def test_decoding_goes_on_past_the_context_in_windows():
  """Past the context the last context // 2 tokens are read again as the prompt of the next
  window; within each window the tokens are the cached decoder's."""
  model = _model(position="rope")
  decoder = decoding.Decoder(model)
  context, prompt = 32, _prompts([10], seed=7)[0]
  tokens = generate.continue_rows(decoder, [prompt], 50, GREEDY, context, seed=0)[0]
  assert len(tokens) == 50
  first = decoder([prompt], context - 10, GREEDY).tokens[0]
  np.testing.assert_array_equal(tokens[:22], first)
  second = decoder([np.concatenate([prompt, first])[-16:]], 16, GREEDY).tokens[0]
  np.testing.assert_array_equal(tokens[22:38], second)


def test_decoding_errors():
  model = _model()
  with pytest.raises(ValueError, match="no prompts"):
    decoding.decode(model, [], 4, GREEDY)
  with pytest.raises(ValueError, match="at least one token"):
    decoding.decode(model, [np.zeros(0, np.int32)], 4, GREEDY)


@pytest.fixture(scope="module")
def trained_run(build_once, tiny_gpt_config):
  from pretrax.training import trainer

  def build(root):
    trainer.train(tiny_gpt_config(root, **{"train.steps": "2", "train.eval_every": "0"}),
                  str(root / "run"))

  return str(build_once("decoding_run", build) / "run")


def test_sample_cli_continues_a_file_of_prompts(trained_run, tmp_path, capsys):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "To be"}\n\n{"prompt": "First Citizen:"}\n')
  cli.main(["sample", f"--workdir={trained_run}", f"--prompts={prompts}", "--num_samples=2",
            "--max_new_tokens=8", "--seed=1"])
  captured = capsys.readouterr()
  rows = [json.loads(line) for line in captured.out.splitlines()]
  assert [(r["prompt"], r["sample"]) for r in rows] == [
      ("To be", 0), ("To be", 1), ("First Citizen:", 0), ("First Citizen:", 1)]
  assert all(isinstance(r["generation"], str) for r in rows)
  assert "tokens/s" in captured.err
  # The same prompt alone is its first sample (rows never see each other).
  alone = generate.sample(trained_run, "To be", 8, seed=1, report=lambda line: None)
  assert alone == rows[0]["generation"]


def test_sample_bad_input(trained_run, tmp_path):
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="no prompts"):
    generate.read_prompts(str(empty))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    generate.read_prompts(str(bad))
  lines = []
  out = generate.sample(trained_run, "y" * 100, 4, report=lines.append)  # 101 tokens with BOS
  assert len(out.encode()) <= 4 * 4
  assert any("keep their last 16" in line for line in lines)
  with pytest.raises(ValueError, match="--num_samples=0"):
    generate.sample_prompts(trained_run, ["x"], 4, num_samples=0)


# --------------------------------------------------------------------------------------------
# Encoder-decoders, beam search, stop strings.

SEQ2SEQ = dataclasses.replace(TINY, family="encoder_decoder", d_ff=64)


def _seq2seq_model(**overrides):
  from pretrax.modeling.encoder_decoder import EncoderDecoder
  return EncoderDecoder(dataclasses.replace(SEQ2SEQ, **overrides), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("overrides", [
    {"position": "learned"}, {"position": "relative", "attention_scale": False},
    pytest.param({"position": "sinusoidal", "norm_position": "post", "decoder_layers": 3},
                 marks=pytest.mark.long)],
    ids=["learned", "relative", "sinusoidal-post_LN-3_decoder_layers"])
def test_encoder_decoder_cached_decoding_equals_full_recomputation(overrides):
  """The encoder runs once, cross-attention keys/values are computed once, the decoder's
  self-attention is cached: each step's logits equal the full model on the tokens so far."""
  model = _seq2seq_model(**overrides)
  sources = _prompts([5, 13, 2], seed=3)
  out = decoding.decode(model, sources, 14, GREEDY, keep_logits=True, start_id=2)
  forward = nnx.jit(lambda m, s, d: m(s, d))
  for source, tokens, logits in zip(sources, out.tokens, out.logits, strict=True):
    assert len(tokens) == 14
    decoder_inputs = np.concatenate([[2], tokens[:-1]])
    full_nv = np.asarray(forward(model, jnp.asarray(source)[None],
                                 jnp.asarray(decoder_inputs)[None])[0])
    np.testing.assert_allclose(logits, full_nv, rtol=0, atol=1e-5 * np.abs(full_nv).max())
    allowed = np.asarray(decoding.tokenizer_logits(jnp.asarray(full_nv), 60, 0))
    clear = np.diff(np.sort(allowed, axis=-1)[:, -2:], axis=-1)[:, 0] > 1e-4
    np.testing.assert_array_equal(tokens[clear], allowed.argmax(-1)[clear])


def test_one_beam_is_greedy_and_a_row_alone_equals_it_in_a_batch():
  model = _model(position="rope")
  prompts = _prompts([3, 8, 1], seed=4)
  decoder = decoding.Decoder(model)
  greedy = decoder(prompts, 10, GREEDY)
  one = decoder.beam_search(prompts, 10, decoding.Beam(1), GREEDY)
  for a, b in zip(greedy.tokens, one.tokens, strict=True):
    np.testing.assert_array_equal(a, b)
  beam = decoding.Beam(3, length_penalty=0.5, num_return=2)
  together = decoder.beam_search(prompts, 10, beam, GREEDY)
  alone = decoder.beam_search(prompts[1:2], 10, beam, GREEDY)
  for a, b in zip(together.tokens[2:4], alone.tokens, strict=True):
    np.testing.assert_array_equal(a, b)
  assert together.scores[2] >= together.scores[3]  # best first
  with pytest.raises(ValueError, match="num_beams=40"):
    decoder.beam_search(prompts, 4, decoding.Beam(40), GREEDY)


def test_rows_stop_once_their_text_contains_a_stop_string():
  from pretrax.data import tokenizers
  from pretrax.inference import stop_strings
  tok = tokenizers.ByteTokenizer()
  ascii_ids = tok.byte_offset + 128
  model = _model(vocab_size=ascii_ids + 9)  # draws only ASCII bytes
  sampling = decoding.Sampling(temperature=0.0, vocab_size=ascii_ids, pad_id=tok.pad_id)
  prompts = [np.array([tok.bos_id, *tok.encode(t)], np.int32) for t in ("ab", "xyz")]
  decoder = decoding.Decoder(model)
  free = decoder(prompts, 20, sampling)
  text = tok.token_bytes()
  made = b"".join(text[i] for i in free.tokens[0])
  stop_bytes = made[6:8]
  first_end = made.find(stop_bytes) + len(stop_bytes)  # the stop string may occur earlier
  stop = stop_strings.StopStrings(tok, [stop_bytes.decode("ascii")])
  stopped = decoder(prompts, 20, sampling, stop=stop)
  assert stopped.stopped[0] and len(stopped.tokens[0]) == first_end
  np.testing.assert_array_equal(stopped.tokens[0], free.tokens[0][:first_end])
  other = b"".join(text[i] for i in free.tokens[1])
  if stop_bytes not in other:  # the other row goes on
    np.testing.assert_array_equal(stopped.tokens[1], free.tokens[1])
