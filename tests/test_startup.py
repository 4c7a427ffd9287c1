"""Process set-up before JAX starts: which settings apply where, and that the allocator setting
removes the page faults of XLA's per-step temporary buffer (counted by the kernel)."""

import json
import os
import subprocess
import sys

import pytest

from pretrax.cli import main as cli
from pretrax.cli import startup

# A jitted function whose [4096, 4096] float32 intermediate (64 MiB, more than glibc's largest
# mmap threshold) lives in XLA's temporary buffer; the kernel's minor fault count over 20 calls.
# The runtime frees that buffer asynchronously, just after the result is ready; the pause after
# each call lets the free land before the next call allocates, as a training step's host work
# between steps usually does (when it does not, a second buffer is kept: see cli/startup.py).
_FAULTS = """
import json, resource, sys, time
from pretrax.cli import startup
done = startup.prepare({"PRETRAX_HOST_MEMORY": sys.argv[1]})
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w1, w2: (x @ w1) @ w2)
x, w1, w2 = jnp.ones((4096, 8)), jnp.ones((8, 4096)), jnp.ones((4096, 8))
def call():
  jax.block_until_ready(f(x, w1, w2))
  time.sleep(0.05)
for _ in range(3):
  call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  call()
print(json.dumps({"done": done,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(code: str, *args: str, **env) -> dict:
  out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_only_from_jax_platforms_or_plugins():
  assert startup.runs_on_cpu_only({}, plugins=())
  assert not startup.runs_on_cpu_only({}, plugins=("xla_cuda12",))
  assert startup.runs_on_cpu_only({"JAX_PLATFORMS": "cpu"}, plugins=("xla_cuda12",))
  assert not startup.runs_on_cpu_only({"JAX_PLATFORMS": "cuda,cpu"}, plugins=())


# The setting is glibc's mallopt; on another C library prepare() neither applies nor claims it.
@pytest.mark.slow
@pytest.mark.skipif(startup.glibc() is None, reason="the allocator setting exists only with glibc")
def test_kept_host_memory_removes_the_page_faults_of_each_step():
  kept, released = _run(_FAULTS, "keep"), _run(_FAULTS, "release")
  assert kept["done"] and not released["done"]
  # 64 MiB of fresh pages per call is 16,384 faults of 4 KiB; kept, the pages are reused, so the
  # 20 calls together fault less than one call's buffer.
  assert released["faults"] > 10 * 16384, released
  assert kept["faults"] < 16384, (kept, released)


def test_gpu_flags_only_where_a_cuda_plugin_is_and_xla_flags_is_unset():
  code = """
import json
from pretrax.cli import startup
cases = [({}, ("xla_cuda12",)), ({"XLA_FLAGS": "--mine"}, ("xla_cuda12",)), ({}, ())]
out = []
for env, plugins in cases:
  startup.prepare(env, plugins=plugins)
  out.append(env.get("XLA_FLAGS"))
print(json.dumps(out))
"""
  assert _run(code) == [startup.GPU_XLA_FLAGS, "--mine", None]


def test_running_backend_is_left_alone_and_bad_setting_is_named(capsys):
  import jax
  jax.devices()  # this test process's backend runs (8 CPU devices, tests/conftest.py)
  env = {}
  assert startup.prepare(env, plugins=("xla_cuda12",)) == [] and env == {}
  with pytest.raises(ValueError, match=r"PRETRAX_HOST_MEMORY='fast'; choose one of keep \| release"):
    startup.prepare({"PRETRAX_HOST_MEMORY": "fast"})
  os.environ["PRETRAX_HOST_MEMORY"] = "fast"
  try:
    assert cli.main(["eval", "--workdir=/nonexistent"]) == 2
  finally:
    del os.environ["PRETRAX_HOST_MEMORY"]
  assert "PRETRAX_HOST_MEMORY='fast'" in capsys.readouterr().err
