"""Process settings that must be made before JAX starts its backend.

`prepare()` runs first thing in the `pretrax` command and the throughput benchmark:

- GPUs (a CUDA plugin is installed, XLA_FLAGS unset): `GPU_XLA_FLAGS`, XLA's latency-hiding
  scheduler and friends, so collectives overlap with compute.
- CPU only (no accelerator plugin, or JAX_PLATFORMS=cpu): the host allocator keeps freed memory.
  XLA's CPU runtime allocates one buffer for all of a step's intermediates at every execution and
  frees it after. glibc serves blocks that large with fresh mmaps, so every step the kernel
  zero-fills every page on first touch again. With one malloc arena, no mmap for large blocks and
  no trimming, the next step reuses the same pages. The price: the process keeps its peak host
  memory, and when a step's buffer is allocated before the previous step's is freed (the runtime
  frees it asynchronously), both stay resident. Page faults, step times and peak RSS with and
  without the setting are in benchmarks/RESULTS.md. PRETRAX_HOST_MEMORY=release leaves glibc's
  defaults.

Threads pick their malloc arena when they first allocate, so the allocator setting only helps when
it comes before JAX creates its CPU threads; a process whose backend is already running gets
nothing changed. Elsewhere (a script of your own that imports pretrax), the same glibc setting is
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1` in the environment.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform

# XLA flags that matter on GPUs (overlap of collectives and compute).
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true "
                 "--xla_gpu_enable_triton_gemm=false "
                 "--xla_gpu_enable_highest_priority_async_stream=true")
HOST_MEMORY = ("keep", "release")  # PRETRAX_HOST_MEMORY

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def installed_plugins() -> tuple[str, ...]:
  """JAX's accelerator plugins on this machine, found as JAX finds them (modules of the
  `jax_plugins` namespace, `jax_plugins` entry points) plus libtpu; nothing is imported."""
  names = set()
  spec = importlib.util.find_spec("jax_plugins")
  if spec is not None and spec.submodule_search_locations:
    names.update(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations))
  names.update(ep.name for ep in importlib.metadata.entry_points(group="jax_plugins"))
  if importlib.util.find_spec("libtpu") is not None:
    names.add("libtpu")
  return tuple(sorted(names))


def runs_on_cpu_only(environ, plugins: tuple[str, ...]) -> bool:
  """Whether JAX's default backend will be the CPU: JAX_PLATFORMS names cpu first, or it is unset
  and no accelerator plugin is installed."""
  chosen = environ.get("JAX_PLATFORMS", "").strip()
  if chosen:
    return chosen.split(",")[0].strip().lower() == "cpu"
  return not plugins


def _backend_started() -> bool:
  import jax._src.xla_bridge as xla_bridge
  return xla_bridge.backends_are_initialized()


def glibc() -> ctypes.CDLL | None:
  """This process's C library if it is glibc (whose malloc the settings here are for), else None."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  return ctypes.CDLL("libc.so.6")


def keep_freed_host_memory() -> bool:
  """One malloc arena, no mmap for large blocks, no trimming (glibc only). True if applied."""
  libc = glibc()
  return libc is not None and all(
      libc.mallopt(param, value) == 1
      for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def release_free_host_memory() -> None:
  """Hands the allocator's free memory back to the OS now (glibc malloc_trim), e.g. between
  measurements of peak memory."""
  libc = glibc()
  if libc is not None:
    libc.malloc_trim(0)


def prepare(environ=None, plugins: tuple[str, ...] | None = None) -> list[str]:
  """Applies the settings above that fit this machine (`plugins`: the installed accelerator
  plugins, found if None); returns what it set, in words. Nothing once JAX's backend runs."""
  environ = os.environ if environ is None else environ
  host_memory = environ.get("PRETRAX_HOST_MEMORY", "keep")
  if host_memory not in HOST_MEMORY:
    raise ValueError(f"PRETRAX_HOST_MEMORY={host_memory!r}; choose one of {' | '.join(HOST_MEMORY)}")
  if _backend_started():
    return []
  done = []
  plugins = installed_plugins() if plugins is None else plugins
  if "XLA_FLAGS" not in environ and any("cuda" in name for name in plugins):
    environ["XLA_FLAGS"] = GPU_XLA_FLAGS
    done.append(f"XLA_FLAGS={GPU_XLA_FLAGS}")
  if (runs_on_cpu_only(environ, plugins) and host_memory == "keep"
      and keep_freed_host_memory()):
    done.append("on CPU, memory freed after each step is kept for the next one (faster steps; "
                "the process keeps its peak memory): set PRETRAX_HOST_MEMORY=release if memory "
                "is tight")
  return done
