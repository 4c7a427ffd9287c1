"""Logical axis names for parameters and activations, and the rules that map them to a mesh.

The model names every dimension logically ("batch", "length", "embed", "heads", "kv", "mlp",
"vocab", "position"); one rules table (set by the caller with `axis_rules`) decides which mesh
axes each name is sharded over. Without an active mesh the constraints are no-ops, so the same
model code runs unsharded on one CPU and sharded on a pod.
"""

import contextlib
import contextvars
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import PartitionSpec

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar("pretrax_axis_rules", default=())


@contextlib.contextmanager
def axis_rules(rules: Rules):
  """Makes `rules` the logical -> mesh mapping used by `constrain` inside the block."""
  token = _RULES.set(tuple(rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
  """("batch", "length", "embed") -> PartitionSpec(("data", "fsdp"), None, "fsdp") under `rules`.

  A mesh axis is used at most once per spec: a later dimension that maps to an axis already used
  stays replicated along it.
  """
  table = dict(_RULES.get() if rules is None else rules)
  used, spec = set(), []
  for name in names:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains activation `x` to the sharding its logical `names` map to (no-op without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not _RULES.get():
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def param(init_fn, key: jax.Array, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter initialized by `init_fn(key, shape)` and labelled with logical axes."""
  if len(names) != len(shape):
    raise ValueError(f"logical names {names} do not match parameter shape {shape}")
  return nnx.Param(init_fn(key, tuple(shape), jax.numpy.float32), out_sharding=tuple(names),
                   eager_sharding=False)
