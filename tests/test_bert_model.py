"""BERT model invariants: bidirectional attention, packing, gathered MLM head, token types."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrax.modeling.bert import BERT
from pretrax.training import config as config_lib


def _config(**overrides):
  config = config_lib.load_preset("bert:tiny").model
  return dataclasses.replace(config, vocab_size=64, num_layers=2, d_model=32, num_heads=2,
                             max_seq_len=32, **overrides)


def _model(**overrides):
  return BERT(_config(**overrides), rngs=nnx.Rngs(0))


def _hidden(model, ids, **kwargs):
  return np.asarray(model.hidden_states(jnp.asarray(ids), **kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_every_token_sees_the_tokens_after_it(norm_position):
  model = _model(norm_position=norm_position)
  rng = np.random.default_rng(0)
  x = rng.integers(7, 64, size=(1, 12))
  y = x.copy()
  y[0, -1] = (x[0, -1] + 1 - 7) % 57 + 7  # change only the last token
  hx, hy = _hidden(model, x), _hidden(model, y)
  for t in range(11):  # every earlier position changes: attention is bidirectional
    assert not np.allclose(hx[0, t], hy[0, t], atol=1e-6), t


@pytest.mark.slow
def test_packed_rows_equal_unpacked_documents():
  model = _model()
  rng = np.random.default_rng(1)
  a, b = rng.integers(7, 64, size=6), rng.integers(7, 64, size=9)
  ids = np.zeros((1, 20), np.int64)
  ids[0, :6], ids[0, 6:15] = a, b
  seg = np.array([[1] * 6 + [2] * 9 + [0] * 5])
  pos = np.array([list(range(6)) + list(range(9)) + [0] * 5])
  types = np.array([[0] * 3 + [1] * 3 + [0] * 4 + [1] * 5 + [0] * 5])
  packed = _hidden(model, ids, segment_ids_bt=jnp.asarray(seg), positions_bt=jnp.asarray(pos),
                   token_type_ids_bt=jnp.asarray(types))
  alone_a = _hidden(model, a[None], token_type_ids_bt=jnp.asarray(types[:, :6]))
  alone_b = _hidden(model, b[None], token_type_ids_bt=jnp.asarray(types[:, 6:15]))
  np.testing.assert_allclose(packed[0, :6], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 6:15], alone_b[0], atol=1e-5)


@pytest.mark.slow
def test_token_types_change_the_output():
  model = _model()
  ids = jnp.asarray(np.arange(7, 17)[None])
  assert not np.allclose(_hidden(model, ids),
                         _hidden(model, ids, token_type_ids_bt=jnp.ones_like(ids)))


@pytest.mark.slow
def test_mlm_head_at_gathered_positions_equals_the_full_sequence_head():
  model = _model()
  ids = jnp.asarray(np.random.default_rng(2).integers(7, 64, size=(2, 10)))
  positions = jnp.array([[1, 4, 7], [0, 0, 9]])
  mlm, nsp = model(ids, positions)
  assert mlm.shape == (2, 3, 64) and nsp.shape == (2, 2)
  hidden = model.hidden_states(ids)
  full = model.mlm_logits(hidden, jnp.broadcast_to(jnp.arange(10), (2, 10)))
  np.testing.assert_allclose(mlm, np.take_along_axis(np.asarray(full), np.asarray(positions)[..., None], 1),
                             atol=1e-5)
  # The MLM projection is tied to the token embedding (no separate output matrix).
  assert not any("w_io" in str(path) and model.config.vocab_size in var.shape
                 for path, var in nnx.to_flat_state(nnx.state(model)) if "mlm" in str(path))


@pytest.mark.slow
def test_nsp_reads_only_the_cls_position():
  model = _model()
  ids = np.random.default_rng(3).integers(7, 64, size=(1, 8))
  hidden = model.hidden_states(jnp.asarray(ids))
  changed = np.asarray(hidden).copy()
  changed[0, 1:] += 1.0
  np.testing.assert_allclose(model.nsp_logits(model.pooled(hidden)),
                             model.nsp_logits(model.pooled(jnp.asarray(changed))), atol=1e-6)
