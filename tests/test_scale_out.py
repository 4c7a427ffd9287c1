"""Scaling switches that must not change the math: remat and scanned layers; where parameters live
on the mesh, and the errors when they cannot be placed.

Remat/scan: every combination of model.remat (none | full | dots) and model.scan_layers gives the
plain model's loss and gradients in float32: the loss to rtol 1e-5, each gradient entry to within
1e-5 of the largest gradient entry (a few gradients are exactly zero in theory, e.g. the key bias,
and come out as ~1e-14 noise whose relative error means nothing). GPT runs with dropout on, so
the per-layer dropout streams must agree too.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from pretrax.modeling import models, sharding
from pretrax.modeling.config import ModelConfig
from pretrax.training import config as config_lib, mesh as mesh_lib
from pretrax.training import optimizer as optimizer_lib, sharding_report
from pretrax.training.config import ConfigError, MeshConfig

VARIANTS = [(remat, scan) for remat in ("none", "full", "dots") for scan in (False, True)]
# The XLA backend's optimization level only changes how fast the CPU code is compiled and runs,
# not what it computes; level 0 compiles these small graphs ~3x faster on a loaded machine.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _gpt_loss(model, batch, rngs):
  logits_btv = model(batch["ids"], batch["segment_ids"], batch["positions"], rngs=rngs)
  logp_btv = jax.nn.log_softmax(logits_btv)
  return -jnp.mean(jnp.take_along_axis(logp_btv, batch["targets"][..., None], axis=-1))


def _bert_loss(model, batch, rngs):
  mlm_bpv, nsp_b2 = model(batch["ids"], batch["masked"], batch["segment_ids"], batch["positions"],
                          batch["types"], rngs=rngs)
  mlm = jnp.take_along_axis(jax.nn.log_softmax(mlm_bpv), batch["masked_ids"][..., None], axis=-1)
  return -jnp.mean(mlm) - jnp.mean(jax.nn.log_softmax(nsp_b2)[:, 0])


def _batch(vocab, b=2, t=16):
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
  # Two packed documents in row 0 (10 + 6 tokens), one in row 1 with 3 padding positions.
  segment_ids = np.array([[1] * 10 + [2] * 6, [1] * 13 + [0] * 3], np.int32)
  positions = np.array([list(range(10)) + list(range(6)), list(range(13)) + [0] * 3], np.int32)
  return {"ids": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segment_ids,
          "positions": positions, "types": (np.arange(t) >= t // 2).astype(np.int32)[None].repeat(b, 0),
          "masked": np.array([[1, 4, 7], [2, 3, 12]], np.int32),
          "masked_ids": rng.integers(0, vocab, (b, 3)).astype(np.int32)}


def _loss_and_grads(config: ModelConfig, loss_fn, batch, dropout: bool):
  graphdef, state = nnx.split(models.build(config, nnx.Rngs(params=0)))
  params = nnx.to_pure_dict(state)

  def loss(params):
    rngs = nnx.Rngs(dropout=7) if dropout else None
    return loss_fn(nnx.merge(graphdef, params), batch, rngs)

  grad_fn = jax.value_and_grad(loss)
  jaxpr = str(jax.make_jaxpr(grad_fn)(params))
  value, grads = jax.jit(grad_fn).lower(params).compile(FAST_COMPILE)(params)
  return float(value), grads, jaxpr


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_remat_and_scan_give_the_plain_loss_and_gradients(family):
  base = ModelConfig(family=family, vocab_size=128, max_seq_len=16, num_layers=2, num_heads=2,
                     d_model=16, dropout=0.1 if family == "gpt" else 0.0,
                     attention_dropout=0.1 if family == "gpt" else 0.0)
  if family == "bert":
    base = dataclasses.replace(base, norm_position="post", type_vocab_size=2, embed_norm=True,
                               activation="gelu")
  loss_fn = _gpt_loss if family == "gpt" else _bert_loss
  batch = jax.tree.map(jnp.asarray, _batch(base.vocab_size))
  dropout = base.dropout > 0
  ref_loss, ref_grads, _ = _loss_and_grads(base, loss_fn, batch, dropout)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
  for remat, scan in VARIANTS[1:]:
    config = dataclasses.replace(base, remat=remat, scan_layers=scan)
    loss, grads, jaxpr = _loss_and_grads(config, loss_fn, batch, dropout)
    # The switches really change the program: a remat region with the policy, a scan over layers.
    policy = {"none": None, "full": "policy=<function nothing_saveable",
              "dots": "policy=DotsSaveable(only_if_no_batch_dims=True)"}[remat]
    assert ("remat" in jaxpr) == (policy is not None), (remat, scan)
    assert policy is None or policy in jaxpr, (remat, scan)
    assert ("scan" in jaxpr) == scan, (remat, scan)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=f"{remat}, scan={scan}")
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)  # same parameter layout
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * scale,
                                 err_msg=f"{remat}, scan={scan}: {jax.tree_util.keystr(path)}")


@pytest.mark.slow
def test_scanned_remat_layers_on_a_mesh():
  """The scan path under a (2, 2, 2) mesh with the axis rules (stacked weights constrained to
  their parameters' shardings) gives the unsharded plain model's loss and gradients."""
  base = ModelConfig(family="gpt", vocab_size=128, max_seq_len=16, num_layers=2, num_heads=2,
                     d_model=16)
  batch = jax.tree.map(lambda x: jnp.concatenate([x, x]), _batch(base.vocab_size))  # 4 rows
  ref_loss, ref_grads, _ = _loss_and_grads(base, _gpt_loss, batch, dropout=False)
  config = dataclasses.replace(base, remat="dots", scan_layers=True)
  rules, mesh = config_lib.DEFAULT_AXIS_RULES, _mesh(2, 2, 2)
  graphdef, state = nnx.split(models.build(config, nnx.Rngs(params=0)))
  specs = mesh_lib.param_specs(state, rules, mesh)
  params = jax.device_put(nnx.to_pure_dict(state), mesh_lib.named(mesh, specs))
  batch = jax.device_put(batch, jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))))
  grad_fn = jax.value_and_grad(lambda p: _gpt_loss(nnx.merge(graphdef, p), batch, None))
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    loss, grads = jax.jit(grad_fn).lower(params).compile(FAST_COMPILE)(params)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * scale)
  assert grads["blocks"][0]["mlp"]["w_in_df"].sharding.spec == P("fsdp", "tensor")


@pytest.mark.slow
def test_dropout_differs_between_layers():
  """With scanned layers each layer still draws its own masks: two identical layers (same
  weights) with dropout give a different output than one layer applied twice with one mask."""
  config = ModelConfig(family="gpt", vocab_size=128, max_seq_len=8, num_layers=2, num_heads=2,
                       d_model=16, dropout=0.5, scan_layers=True)
  model = models.build(config, nnx.Rngs(params=0))
  nnx.update(model.blocks[1], nnx.state(model.blocks[0]))
  x = jax.random.normal(jax.random.key(0), (1, 8, 16))
  mask = jnp.ones((1, 1, 8, 8), bool)
  pos = jnp.arange(8)[None]
  key = jax.random.key(3)
  out = model.run_blocks(x, mask, pos, nnx.Rngs(dropout=key))
  layer_key = nnx.Rngs(dropout=key).dropout()
  same = x
  for _ in range(2):
    same = model.blocks[0](same, mask, pos, nnx.Rngs(dropout=jax.random.fold_in(layer_key, 0)))
  assert not np.allclose(out, same)
  first = model.blocks[0](x, mask, pos, nnx.Rngs(dropout=jax.random.fold_in(layer_key, 0)))
  want = model.blocks[1](first, mask, pos, nnx.Rngs(dropout=jax.random.fold_in(layer_key, 1)))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Placement on the mesh.


def _model_config(**fields) -> ModelConfig:
  return ModelConfig(**{"family": "gpt", "vocab_size": 256, "max_seq_len": 32, "num_layers": 1,
                        "num_heads": 4, "d_model": 32, **fields})


def _mesh(data, fsdp, tensor):
  return mesh_lib.make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor),
                            jax.devices()[:data * fsdp * tensor])


def test_mesh_errors_name_the_dimension_and_the_axis():
  _, abstract = models.abstract_model(_model_config(num_heads=3, d_model=48))
  with pytest.raises(ConfigError, match=r"blocks/0/attn/\w+ dimension \d \('heads', size 3\) is "
                                        r"not divisible by mesh axes \('tensor',\) of total size 2"):
    mesh_lib.param_specs(abstract, config_lib.DEFAULT_AXIS_RULES, _mesh(2, 2, 2))
  _, abstract = models.abstract_model(_model_config(d_model=36))
  with pytest.raises(ConfigError, match=r"dimension \d \('embed', size 36\) is not divisible by "
                                        r"mesh axes \('fsdp',\) of total size 8"):
    mesh_lib.param_specs(abstract, config_lib.DEFAULT_AXIS_RULES, _mesh(1, 8, 1))
  with pytest.raises(ConfigError, match=r"data\*fsdp\*tensor = 2\*2\*4 = 16, but there are 8 "
                                        r"devices"):
    mesh_lib.mesh_shape(MeshConfig(data=2, fsdp=2, tensor=4), 8)
  with pytest.raises(ConfigError, match=r"8 is not divisible by 3"):
    mesh_lib.mesh_shape(MeshConfig(data=-1, fsdp=3, tensor=1), 8)


@pytest.mark.slow
def test_parameters_and_optimizer_state_are_sharded_as_the_rules_say():
  """Initialized the trainer's way (jit with out_shardings) on (2, 2, 2): each array's spec and
  shard shape follow the rules, and describe_sharding's per-device bytes are what device 0 holds."""
  config = config_lib.Config(model=_model_config())
  rules, mesh = config.mesh.axis_rules, _mesh(2, 2, 2)
  _, abstract = models.abstract_model(config.model)
  abstract_params = nnx.to_pure_dict(abstract)
  optimizer = optimizer_lib.make_optimizer(config.optimizer, 10)
  params_specs = mesh_lib.param_specs(abstract, rules, mesh)
  opt_specs = mesh_lib.opt_state_specs(optimizer, abstract_params, params_specs)

  def init():
    params = nnx.to_pure_dict(nnx.state(models.build_model(config.model)))
    return params, optimizer.init(params)

  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    params, opt_state = jax.jit(init, out_shardings=mesh_lib.named(mesh, (params_specs, opt_specs)))()
  d, f, h, k, v = 32, 128, 4, 8, 256
  expected = {  # logical axes -> mesh axes under DEFAULT_AXIS_RULES, and one device's shard
      ("blocks", 0, "mlp", "w_in_df"): (P("fsdp", "tensor"), (d // 2, f // 2)),
      ("blocks", 0, "mlp", "w_out_fd"): (P("tensor", "fsdp"), (f // 2, d // 2)),
      ("blocks", 0, "attn", "w_q_dhk"): (P("fsdp", "tensor", None), (d // 2, h // 2, k)),
      ("blocks", 0, "attn", "w_o_hkd"): (P("tensor", None, "fsdp"), (h // 2, k, d // 2)),
      ("token_embed_vd",): (P("tensor", "fsdp"), (v // 2, d // 2)),
      ("position_embed_pd",): (P(None, "fsdp"), (32, d // 2)),
      ("final_norm", "scale_d"): (P("fsdp"), (d // 2,)),
  }
  for path, (spec, shard) in expected.items():
    x = params
    for key in path:
      x = x[key]
    assert x.sharding.spec == spec, path
    assert x.addressable_shards[0].data.shape == shard, path
  # Adam's moments are placed like their parameters.
  mu = [s for s in jax.tree.leaves(opt_state) if s.shape == (d, f)]
  assert mu and all(m.sharding.spec == P("fsdp", "tensor") for m in mu)

  def on_device_0(tree):
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == mesh.devices.flat[0])

  assert sharding_report.per_device_bytes(abstract_params, params_specs, mesh) == on_device_0(params)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  assert sharding_report.per_device_bytes(abstract_opt, opt_specs, mesh) == on_device_0(opt_state)
  report = sharding_report.describe_sharding(abstract, params_specs, mesh, abstract_opt, opt_specs)
  line = next(l for l in report.splitlines() if l.startswith("blocks/0/mlp/w_in_df "))
  assert "(32, 128)" in line and "(embed, mlp)" in line and "P('fsdp', 'tensor')" in line
  assert line.endswith(sharding_report.format_bytes(d // 2 * f // 2 * 4))
  total = on_device_0(params) + on_device_0(opt_state)
  assert f"params + optimizer state: {sharding_report.format_bytes(total)} per device" in report
