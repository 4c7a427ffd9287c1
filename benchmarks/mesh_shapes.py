"""Step time and per-device memory of params + optimizer state across mesh shapes, on 8 fake CPU
devices.

  python benchmarks/mesh_shapes.py [--preset=configs/gpt.py:tiny --preset=configs/bert.py:tiny]
      [--steps=10 --warmup=2] [-- --config.model.num_layers=4 ...]

For each preset and each (data, fsdp, tensor) shape of 8 devices: the trainer's sharded state and
jitted, donated train step (benchmarks/throughput.py's `build_train_step`) on random batches; the
first step (compile) is left out, then --warmup steps, then the median of --steps timed steps.
Columns:
  params/dev, opt/dev  bytes one device holds, from the PartitionSpecs (sharding_report) and
                       checked against the shards device 0 really holds
  ms med / min         milliseconds per step
  tokens/s             batch x seq / median step time
The presets get --config.model.num_heads=8 by default so that tensor=8 divides the heads.
Fake CPU devices share the host's cores: the times show the cost of the collectives and of the
sharded program's shape, not what real accelerators would gain. On a shared machine the numbers
are only as good as its load (printed in the header).
"""

import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402  (benchmarks/throughput.py: the trainer's setup, timing helpers)

import argparse  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (4, 2, 1), (2, 4, 1), (4, 1, 2), (1, 2, 4)]
DEFAULT_OVERRIDES = {"model.num_heads": "8"}


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", action="append", dest="presets",
                      help="PATH[:VARIANT] (repeatable); default gpt.py:tiny and bert.py:tiny")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  parser.add_argument("--mesh", action="append", default=None,
                      help="DATAxFSDPxTENSOR (repeatable); default: 8 shapes of 8 devices")
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.presets = args.presets or ["configs/gpt.py:tiny", "configs/bert.py:tiny"]
  args.meshes = ([tuple(int(n) for n in m.split("x")) for m in args.mesh] if args.mesh
                 else MESHES)
  overrides = dict(DEFAULT_OVERRIDES)
  for arg in argv[split + 1:]:
    key, _, value = arg.removeprefix("--config.").partition("=")
    overrides[key] = value
  return args, overrides


def measure(config, steps: int, warmup: int) -> dict:
  """{params_bytes, opt_bytes, median_s, min_s} per device for `config` on its mesh."""
  import numpy as np
  from flax import nnx
  from pretrax.modeling import models, sharding
  from pretrax.training import mesh as mesh_lib, optimizer as optimizer_lib
  from pretrax.training import sharding_report

  mesh = mesh_lib.make_mesh(config.mesh)
  rules = config.mesh.axis_rules
  _, abstract = models.abstract_model(config.model)
  abstract_params = nnx.to_pure_dict(abstract)
  params_specs = mesh_lib.param_specs(abstract, rules, mesh)  # ConfigError if it cannot shard
  optimizer = optimizer_lib.make_optimizer(config.optimizer, config.train.steps)
  opt_specs = mesh_lib.opt_state_specs(optimizer, abstract_params, params_specs)
  params_bytes = sharding_report.per_device_bytes(abstract_params, params_specs, mesh)
  opt_bytes = sharding_report.per_device_bytes(jax.eval_shape(optimizer.init, abstract_params),
                                               opt_specs, mesh)

  state, p_train_step, batch_sharding = throughput.build_train_step(config, mesh)
  device0 = mesh.devices.flat[0]
  held = sum(s.data.nbytes for x in jax.tree.leaves((state["params"], state["opt_state"]))
             for s in x.addressable_shards if s.device == device0)
  assert held == params_bytes + opt_bytes, (held, params_bytes, opt_bytes)

  family, b, t = config.model.family, config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    batches = [mesh_lib.global_batch(
        throughput.SYNTHETIC_BATCHES[family](config, rng, b, t, 256), batch_sharding)
        for _ in range(2)]
    box = {"state": state, "i": 0}

    def run_step():
      box["state"], metrics = p_train_step(box["state"], batches[box["i"] % 2])
      box["i"] += 1
      jax.block_until_ready((box["state"], metrics))

    timing = throughput.time_steps(run_step, steps=steps, warmup=warmup)
  return {"params_bytes": params_bytes, "opt_bytes": opt_bytes, "median_s": timing.median_s,
          "min_s": min(timing.step_s), "first_s": timing.first_s}


def main(argv=None) -> int:
  args, overrides = _parse_args(sys.argv[1:] if argv is None else argv)
  from pretrax.data import tokenizers
  from pretrax.cli import main as cli
  from pretrax.training import config as config_lib, sharding_report
  cli._quiet_logs()
  tokenizer = tokenizers.load_tokenizer("byte")
  fmt = sharding_report.format_bytes
  header = ("preset", "mesh d×f×t", "params/dev", "opt/dev", "total/dev", "ms med", "ms min",
            "tokens/s", "compile s")
  rows = []
  print(f"{jax.device_count()} {jax.devices()[0].platform} devices, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; median of {args.steps} steps after "
        f"{args.warmup} warm-up steps", flush=True)
  for preset in args.presets:
    for mesh in args.meshes:
      mesh_overrides = {"mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]),
                        "mesh.tensor": str(mesh[2])}
      args_like = argparse.Namespace(batch=None, seq=None)
      name = os.path.basename(preset)
      try:
        config = throughput.load_config(preset, args_like, overrides | mesh_overrides, tokenizer)
        m = measure(config, args.steps, args.warmup)
      except config_lib.ConfigError as e:
        rows.append((name, "×".join(map(str, mesh)), f"cannot shard: {e}"))
        print(f"{name} {mesh}: {e}", file=sys.stderr, flush=True)
        continue
      tokens = config.train.batch_size * config.data.seq_len
      rows.append((name, "×".join(map(str, mesh)), fmt(m["params_bytes"]), fmt(m["opt_bytes"]),
                   fmt(m["params_bytes"] + m["opt_bytes"]), f"{1e3 * m['median_s']:.1f}",
                   f"{1e3 * m['min_s']:.1f}", f"{tokens / m['median_s']:,.0f}",
                   f"{m['first_s']:.1f}"))
      print("  ".join(rows[-1]), file=sys.stderr, flush=True)
  widths = [max(len(r[i]) for r in rows + [header] if len(r) > i) for i in range(len(header))]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  print(line(header))
  print(line(["-" * w for w in widths]))
  for row in rows:
    print(line(row) if len(row) == len(header) else "  ".join(row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
