"""Where every parameter lives on the mesh, and what params and optimizer state cost per device.

  pretrax train --config=gpt:small --config.mesh.fsdp=4 --print_sharding

prints one line per parameter (path, shape, logical axes, PartitionSpec, bytes per device) and the
per-device totals, from abstract shapes only: nothing is allocated, so it answers "does this fit"
before a run starts.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec


def shard_shape(shape, spec: PartitionSpec, mesh: Mesh) -> tuple[int, ...]:
  """The shape of one device's shard of an array of `shape` placed by `spec` on `mesh`."""
  out = []
  for dim, size in enumerate(shape):
    axes = spec[dim] if dim < len(spec) else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    out.append(-(-size // math.prod(mesh.shape[a] for a in axes)))
  return tuple(out)


def shard_bytes(shape, dtype, spec: PartitionSpec, mesh: Mesh) -> int:
  return math.prod(shard_shape(shape, spec, mesh)) * np.dtype(dtype).itemsize


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def per_device_bytes(abstract_tree, specs_tree, mesh: Mesh) -> int:
  """Bytes one device holds of `abstract_tree` (arrays or ShapeDtypeStructs) placed by
  `specs_tree` (the same structure with PartitionSpec leaves)."""
  leaves = jax.tree.leaves(abstract_tree)
  specs = jax.tree.leaves(specs_tree, is_leaf=_is_spec)
  if len(leaves) != len(specs):
    raise ValueError(f"{len(leaves)} arrays but {len(specs)} PartitionSpecs: the trees differ")
  return sum(shard_bytes(x.shape, x.dtype, s, mesh) for x, s in zip(leaves, specs))


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024


def _lookup(tree: dict, path):
  for key in path:
    tree = tree[key]
  return tree


def _spec_text(spec: PartitionSpec) -> str:
  return "P(" + ", ".join("None" if a is None else repr(a) if isinstance(a, str)
                          else "(" + ", ".join(map(repr, a)) + ")" for a in spec) + ")"


def describe_sharding(abstract_params, params_specs: dict, mesh: Mesh,
                      abstract_opt_state=None, opt_state_specs=None) -> str:
  """A table of every parameter's path, shape, logical axes, PartitionSpec and bytes per device,
  then totals per device for the parameters and (if given) the optimizer state.

  Args:
    abstract_params: the abstract `nnx.State` of the model (`checkpointing.abstract_model`), whose
      variables carry their logical axis names; a pure dict of arrays / ShapeDtypeStructs works
      too (logical axes then show as "-").
    params_specs: pure-dict tree of PartitionSpecs (`mesh.param_specs`).
    mesh: the device mesh.
    abstract_opt_state, opt_state_specs: the optimizer state's shapes
      (`jax.eval_shape(optimizer.init, params)`) and PartitionSpecs (`mesh.opt_state_specs`).
  """
  if isinstance(abstract_params, nnx.State):
    entries = [(path, var.shape, var.get_value().dtype,
                var.get_metadata().get("out_sharding"))
               for path, var in nnx.to_flat_state(abstract_params)]
  else:
    entries = [(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path), x.shape, x.dtype, None)
               for path, x in jax.tree_util.tree_leaves_with_path(abstract_params)]
  rows, total_values, total_bytes, device_bytes = [], 0, 0, 0
  for path, shape, dtype, names in entries:
    spec = _lookup(params_specs, path)
    nbytes = shard_bytes(shape, dtype, spec, mesh)
    total_values += math.prod(shape)
    total_bytes += math.prod(shape) * np.dtype(dtype).itemsize
    device_bytes += nbytes
    logical = "-" if names is None else "(" + ", ".join(str(n) for n in names) + ")"
    rows.append(("/".join(map(str, path)), str(tuple(shape)), logical, _spec_text(spec),
                 format_bytes(nbytes)))
  header = ("parameter", "shape", "logical axes", "mesh placement", "per device")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  axes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
  out = [f"mesh {axes} ({mesh.size} devices)", line(header)] + [line(r) for r in rows]
  out.append(f"params: {total_values:,} values, {format_bytes(total_bytes)} in all, "
             f"{format_bytes(device_bytes)} per device")
  if abstract_opt_state is not None:
    opt_total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                    for x in jax.tree.leaves(abstract_opt_state))
    opt_device = per_device_bytes(abstract_opt_state, opt_state_specs, mesh)
    out.append(f"optimizer state: {format_bytes(opt_total)} in all, "
               f"{format_bytes(opt_device)} per device")
    out.append(f"params + optimizer state: {format_bytes(device_bytes + opt_device)} per device")
  return "\n".join(out)
