"""The device mesh and the shardings of parameters, optimizer state and batches.

Mesh axes are `data`, `fsdp` and `tensor`; parameters carry logical axis names and
`config.mesh.axis_rules` maps those to mesh axes. Every axis is of type Auto so that logical
sharding constraints inside the model are honoured by the compiler.
"""

import math

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pretrax.modeling import sharding
from pretrax.training.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves -1 to the devices left over and checks the product equals `num_devices`."""
  sizes = [getattr(config, name) for name in AXES]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(f"config.mesh: {dict(zip(AXES, sizes))} cannot fill {num_devices} devices "
                        f"({num_devices} is not divisible by {fixed})")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh: data*fsdp*tensor = {'*'.join(map(str, sizes))} = "
                      f"{math.prod(sizes)}, but there are {num_devices} devices; set one axis "
                      "to -1 to fill the rest")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def _spec_for(names, shape, rules, mesh: Mesh, path: str) -> PartitionSpec:
  spec = sharding.logical_to_spec(names, rules)
  for dim, (size, axes, name) in enumerate(zip(shape, spec, names)):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    shards = math.prod(mesh.shape[a] for a in axes)
    if size % shards:
      raise ConfigError(
          f"parameter {path} dimension {dim} ({name!r}, size {size}) is not divisible by mesh "
          f"axes {axes} of total size {shards}; change the model shape, config.mesh, or "
          "config.mesh.axis_rules")
  return spec


def param_specs(abstract_model_state: nnx.State, rules, mesh: Mesh) -> dict:
  """Pure-dict tree of PartitionSpecs for the parameters, from their logical axis names."""
  specs = {}
  for path, var in nnx.to_flat_state(abstract_model_state):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    node = specs
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _spec_for(names, var.shape, rules, mesh, "/".join(map(str, path)))
  return specs


def opt_state_specs(optimizer: optax.GradientTransformation, abstract_params, params_specs):
  """Optimizer-state leaves shaped like a parameter get its spec; the rest is replicated."""
  abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  return optax.tree_map_params(optimizer, lambda _, spec: spec, abstract_opt_state, params_specs,
                               transform_non_params=lambda _: PartitionSpec(),
                               is_leaf=lambda x: isinstance(x, PartitionSpec))


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Batch arrays of any rank ([B], [B, T], [B, P]): the leading dimension over the axes "batch"
  maps to, the rest replicated."""
  return NamedSharding(mesh, sharding.logical_to_spec(("batch",), rules))


def global_batch(local_batch: dict[str, np.ndarray], sharding_: NamedSharding) -> dict:
  """Assembles this process's rows into global arrays sharded over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding_, v) for k, v in local_batch.items()}


def check_process_rows(batch_sharding: NamedSharding, global_batch_size: int) -> None:
  """Raises unless this process's devices hold exactly its equal, contiguous share of each
  global batch's rows, the part every data pipeline reads (data.global_batches.process_slice)."""
  held = set()
  for index in batch_sharding.addressable_devices_indices_map((global_batch_size, 1)).values():
    held.update(range(*index[0].indices(global_batch_size)))
  share = global_batch_size // jax.process_count()
  first = jax.process_index() * share
  if held != set(range(first, first + share)):
    raise ConfigError(
        f"on this mesh process {jax.process_index()} of {jax.process_count()} holds batch rows "
        f"{min(held)}..{max(held)} ({len(held)} rows), not its own share "
        f"{first}..{first + share - 1}; "
        "lay the data and fsdp mesh axes over the processes (config.mesh) so that each process "
        "holds a contiguous share of the batch")
