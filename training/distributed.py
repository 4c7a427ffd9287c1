"""Multi-process (multi-host) start-up, and the checks a run needs when the process count changes.

One pretrax process runs per host (TPU VM, GPU node) or per group of devices; together they form
one JAX program over all devices. `initialize` connects them and must run before anything else
touches JAX:

  # on each of N hosts (I = 0 .. N-1), the same command but the process id:
  pretrax train --config=... --workdir=SHARED_DIR \
      --coordinator_address=HOST0:1234 --num_processes=N --process_id=I

On a cluster JAX knows (SLURM with more than one task, Open MPI's mpirun, Cloud TPU pods on GKE or
multislice) the three flags can be left out; `--coordinator_address=auto` asks JAX to detect the
cluster itself, which on a Cloud TPU VM queries the metadata server (use it on TPU pods created
with `gcloud compute tpus`, whose hosts carry no environment variable to detect them by).

The workdir must be on storage every process sees (GCS, NFS): all of them write their shards of
each checkpoint there, and process 0 writes config.json and metrics.jsonl.
"""

import glob
import os
import re

import jax

from pretrax.data.errors import InputError

# Environment variables by which JAX's cluster detection (jax._src.clusters) recognises a cluster;
# read here without calling into it, because some of its detectors have side effects (network).
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI = "OMPI_MCA_orte_hnp_uri"


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "1"))
  except ValueError:
    return 1


def detect_cluster() -> str | None:
  """The multi-process cluster this process was launched in, from environment variables only.

  Returns "slurm" (srun with SLURM_NTASKS > 1), "openmpi" (mpirun with more than one rank),
  "tpu" (GKE TPU slices: TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES list more than one host;
  multislice: MEGASCALE_COORDINATOR_ADDRESS), or None for a single process.
  """
  if all(name in os.environ for name in _SLURM) and _int_env("SLURM_NTASKS") > 1:
    return "slurm"
  if _OPEN_MPI in os.environ and _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
    return "tpu"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to a multi-process JAX run; a no-op for a single process.

  - All three given: `jax.distributed.initialize(coordinator_address, num_processes, process_id)`
    (nothing for num_processes=1). Process 0 listens on coordinator_address (HOST:PORT), which
    every process must reach.
  - coordinator_address="auto" alone: `jax.distributed.initialize()`, JAX's own cluster detection.
  - None given: `jax.distributed.initialize()` when `detect_cluster()` finds a multi-process
    cluster, else nothing.
  Already initialized (e.g. by a launcher): nothing.

  Must be called before any other JAX call (jax.devices(), jax.process_index(), any computation).
  Raises ValueError naming the flag for partial or inconsistent arguments.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  if jax.distributed.is_initialized():
    return
  if coordinator_address == "auto":
    if num_processes is not None or process_id is not None:
      raise InputError("--coordinator_address=auto detects --num_processes and --process_id "
                       "too; leave them out")
    _initialize()
    return
  missing = [flag for flag, value in given.items() if value is None]
  if missing and len(missing) < len(given):
    raise InputError(f"multi-process training needs all of --coordinator_address=HOST:PORT, "
                     f"--num_processes=N and --process_id=I (missing {', '.join(missing)}); give "
                     "all three, --coordinator_address=auto, or none for a single process")
  if not missing:
    if num_processes < 1:
      raise InputError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
      raise InputError(f"--process_id must be in [0, --num_processes={num_processes}), "
                       f"got {process_id}")
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", coordinator_address):
      raise InputError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT "
                       "(process 0's address, reachable from every process)")
    if num_processes > 1:
      _initialize(coordinator_address, num_processes, process_id)
    return
  if detect_cluster() is not None:
    _initialize()


def _initialize(*args) -> None:
  try:
    jax.distributed.initialize(*args)
  except RuntimeError as e:
    if "must be called before" in str(e):
      raise RuntimeError(f"{e}\npretrax: call distributed.initialize(...) first thing in the "
                         "process, before anything that uses JAX") from None
    raise


# --------------------------------------------------------------------------------------------
# The data-iterator state of a checkpoint belongs to a process count.


def data_process_count(data_dir: str) -> int | None:
  """How many processes wrote the Grain iterator state in a checkpoint's `data` item directory
  (files `process_I-of-N.json`); None if it holds none."""
  counts = set()
  for path in glob.glob(os.path.join(data_dir, "process_*-of-*.json")):
    match = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", os.path.basename(path))
    if match:
      counts.add(int(match.group(2)))
  if len(counts) > 1:
    raise InputError(f"{data_dir} mixes data-iterator states of {sorted(counts)} processes; "
                     "the checkpoint is damaged")
  return counts.pop() if counts else None


def sync(name: str) -> None:
  """A barrier of all processes (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def check_data_process_count(data_dir: str, process_count: int | None = None) -> None:
  """Raises ValueError when the checkpoint's data position was saved by a different number of
  processes than this run's (`process_count`, default jax.process_count()).

  Each process reads its own shard of the documents (process_index::process_count), so the
  positions of N readers mean nothing to M != N readers: resuming would repeat or skip examples.
  """
  saved = data_process_count(data_dir)
  current = jax.process_count() if process_count is None else process_count
  if saved is not None and saved != current:
    raise InputError(
        f"{data_dir} holds the data-iterator positions of {saved} process(es), but this run has "
        f"{current}; a data position cannot move to a different process count (each process "
        f"reads its own shard of the documents). Resume with {saved} process(es), or pass "
        "`pretrax train --restart_data` to restore the model and optimizer state alone (they "
        "restore onto any mesh) and restart the data stream from its beginning")
