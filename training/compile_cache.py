"""JAX's persistent compilation cache: compiled programs kept on disk, so running the same
shapes again (a restarted run, a second `pretrax train`, `eval` after training) skips compilation.

Where: `config.train.compile_cache_dir`, else $PRETRAX_COMPILE_CACHE, else DEFAULT_DIR; "off" in
either turns it off. A local directory is kept to MAX_BYTES, the least recently used programs
evicted first; processes sharing one take a file lock (JAX's, through `filelock`) to read and write
it.
"""

import os

import jax
from jax.experimental.compilation_cache import compilation_cache as cache_api

OFF = "off"
DEFAULT_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "pretrax", "xla")
MAX_BYTES = 2 << 30
MIN_COMPILE_SECONDS = 0.5  # faster compilations are not worth a file


def resolve(directory: str) -> str:
  """The cache directory `directory` (a config value) stands for; "" when it is off."""
  chosen = directory or os.environ.get("PRETRAX_COMPILE_CACHE", "") or DEFAULT_DIR
  return "" if chosen.strip().lower() == OFF else os.path.expanduser(chosen)


def enable(directory: str) -> str:
  """Turns the cache on in `resolve(directory)` for this process (off when that is "");
  returns the directory."""
  path = resolve(directory)
  if (jax.config.jax_compilation_cache_dir or "") != path:
    jax.config.update("jax_compilation_cache_dir", path or None)
    cache_api.reset_cache()  # JAX opens its cache once; a new directory needs a reset
  if path:
    # Eviction takes a local file lock; a bucket (gs://...) is left to grow.
    jax.config.update("jax_compilation_cache_max_size", -1 if "://" in path else MAX_BYTES)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
