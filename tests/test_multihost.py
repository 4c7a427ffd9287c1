"""Two processes on one machine, and checkpoints that move between meshes and process counts.

Two worker processes with 4 CPU devices each (`jax.distributed` over 127.0.0.1, gloo collectives)
run `trainer.train` on a (2, 2, 2) mesh of all 8 devices; this test process, with 8 fake CPU
devices, runs the same config alone.

The two runs see the same data because causal batches are global: rows are packed once
(data/row_store.py) and global batch t holds rows [8t, 8t + 8) of one seeded order, of which each
process reads the part its devices hold (data/global_batches.py). The corpus is an ordinary one:
documents of varied lengths, shuffled. The losses are sums over rows, so the two runs agree up
to float32 summation order (compared with rtol 2e-5, as tests/test_training.py does for meshes).
The data position is one integer, so a checkpoint of the two processes continues exactly in one.

Worker mode: `python tests/test_multihost.py --worker SPEC.json` (what the test spawns).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ_LEN, BATCH, STEPS, STOP = 32, 8, 6, 4
TRAIN_DOCS, VALIDATION_DOCS = 64, 16
RTOL = 2e-5  # float32, reductions in another order (another mesh or another process count)

pytestmark = pytest.mark.slow  # every test here starts processes or trains


def _config(tmp, mesh=(2, 2, 2), **overrides):
  from pretrax.training import config as config_lib
  corpus = os.path.join(tmp, "rows.jsonl")
  if not os.path.exists(corpus):
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    with open(corpus, "w") as f:
      for length in rng.integers(1, 3 * SEQ_LEN, TRAIN_DOCS + VALIDATION_DOCS):
        f.write(json.dumps({"text": "".join(rng.choice(letters, length))}) + "\n")
  base = {"data.source": f"text:{corpus}", "data.data_dir": os.path.join(tmp, "tfds"),
          "data.validation_fraction": "0.19",
          "model.num_layers": "1", "model.d_model": "32", "model.num_heads": "4",
          "model.max_seq_len": str(SEQ_LEN), "data.seq_len": str(SEQ_LEN),
          "train.batch_size": str(BATCH), "train.steps": str(STEPS), "train.log_every": "1",
          "train.eval_every": str(STOP), "train.eval_steps": "2", "checkpoint.every": str(STOP),
          "optimizer.warmup_steps": "2", "mesh.data": str(mesh[0]), "mesh.fsdp": str(mesh[1]),
          "mesh.tensor": str(mesh[2])}
  base.update(overrides)
  return config_lib.apply_overrides(
      config_lib.load_preset("gpt:tiny"), base)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _worker(spec_path: str) -> None:
  """One of the processes: 4 CPU devices, join the run, train until spec["stop_after"]."""
  with open(spec_path) as f:
    spec = json.load(f)
  import jax
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", spec["local_devices"])
  from pretrax.training import distributed
  distributed.initialize(spec["coordinator"], spec["num_processes"], spec["process_id"])
  from pretrax.training import config as config_lib, trainer
  assert jax.process_count() == spec["num_processes"] and jax.device_count() == 8
  trainer.train(config_lib.load_json(spec["config"]), spec["workdir"],
                stop_after=spec["stop_after"])


def _run_processes(tmp, config, workdir, *, num_processes=2, stop_after=STOP):
  """Starts `num_processes` workers training `config` in `workdir`; returns their Popen handles."""
  import portpicker
  from pretrax.training import config as config_lib
  config_path = os.path.join(tmp, "worker_config.json")
  config_lib.save_json(config, config_path)
  coordinator = f"127.0.0.1:{portpicker.pick_unused_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  procs = []
  for process_id in range(num_processes):
    spec = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id,
            "local_devices": 8 // num_processes, "config": config_path, "workdir": workdir,
            "stop_after": stop_after}
    spec_path = os.path.join(tmp, f"worker_{process_id}.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    log = open(os.path.join(tmp, f"worker_{process_id}.log"), "w+")
    procs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                    spec_path], env=env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs, timeout=300):
  """Waits for every worker; if one fails, stops the others and fails with its output."""
  deadline = time.monotonic() + timeout
  outputs = [None] * len(procs)
  while any(o is None for o in outputs):
    for i, (proc, log) in enumerate(procs):
      if outputs[i] is None and proc.poll() is not None:
        log.seek(0)
        outputs[i] = log.read()
        if proc.returncode != 0:
          for other, _ in procs:
            if other.poll() is None:
              other.kill()
          pytest.fail(f"worker {i} exited with {proc.returncode}:\n{outputs[i][-4000:]}")
    if time.monotonic() > deadline:
      for proc, _ in procs:
        proc.kill()
      pytest.fail(f"workers still running after {timeout} s")
    time.sleep(0.2)
  return outputs


def _train_with_two_processes_and_one(tmp, config, two, one) -> list[str]:
  """Trains `config` in `two` with two worker processes and, meanwhile, in `one` in this process
  (all 8 devices); returns the workers' outputs."""
  import jax
  from pretrax.training import trainer
  procs = _run_processes(tmp, config, two)
  try:
    trainer.train(config, one, devices=jax.devices())
  except BaseException:
    for proc, _ in procs:
      proc.kill()
    raise
  return _wait(procs)


@pytest.fixture(scope="module")
def runs(build_once):
  """The 2-process run (stopped at step 4 of 6) and the 1-process run (all 6 steps), at once;
  made by one pytest worker for all."""
  from pretrax.data import sources

  def build(tmp):
    config = _config(str(tmp))
    sources.open_source(config.data, "train")  # the processes race to build the rows (a file lock)
    _train_with_two_processes_and_one(str(tmp), config, str(tmp / "two_processes"),
                                      str(tmp / "one_process"))

  tmp = str(build_once("multihost", build))
  outputs = []
  for process_id in range(2):  # what each worker printed (_run_processes keeps it)
    with open(os.path.join(tmp, f"worker_{process_id}.log")) as f:
      outputs.append(f.read())
  return {"tmp": tmp, "config": _config(tmp), "two": os.path.join(tmp, "two_processes"),
          "one": os.path.join(tmp, "one_process"), "outputs": outputs}


def test_two_processes_train_like_one(runs):
  two, one = _metrics(runs["two"]), _metrics(runs["one"])
  # metrics.jsonl is written by process 0 alone: one record per step, none twice.
  assert [m["step"] for m in two] == list(range(1, STOP + 1))
  print("2 processes vs 1, relative loss differences per step:",
        [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(two, one)],
        "eval:", abs(two[-1]["eval_loss"] - one[STOP - 1]["eval_loss"]) / one[STOP - 1]["eval_loss"])
  assert [m["step"] for m in one] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one[:STOP]], rtol=RTOL)
  np.testing.assert_allclose([m["grad_norm"] for m in two], [m["grad_norm"] for m in one[:STOP]],
                             rtol=1e-4)
  np.testing.assert_allclose(two[-1]["eval_loss"], one[STOP - 1]["eval_loss"], rtol=RTOL)
  assert two[-1]["eval_tokens"] == one[STOP - 1]["eval_tokens"] > 0
  # Only process 0 prints the final summary line.
  final = [o.strip().splitlines()[-1] if o.strip() else "" for o in runs["outputs"]]
  assert json.loads(final[0])["step"] == STOP
  assert not final[1].startswith("{")
  # The data position is one global row index, not a state per process.
  step_dir = os.path.join(runs["two"], "checkpoints", str(STOP))
  assert not os.path.exists(os.path.join(step_dir, "data"))
  assert os.path.isdir(os.path.join(step_dir, "data_position"))


def test_two_process_checkpoint_continues_exactly_in_one_process(runs):
  """Steps 1-4 in two processes, then steps 5-6 in one process on another mesh: the losses of the
  uninterrupted one-process run, with no --restart_data."""
  import jax
  from pretrax.training import trainer
  copy = os.path.join(runs["tmp"], "two_processes_then_one")
  shutil.copytree(runs["two"], copy)
  config = _config(runs["tmp"], mesh=(1, 8, 1), **{"train.eval_every": "0"})
  trainer.train(config, copy, devices=jax.devices())
  resumed, whole = _metrics(copy), _metrics(runs["one"])
  assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
  print("2 processes then 1: relative loss differences at steps 5, 6:",
        [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(resumed[STOP:], whole[STOP:])])
  np.testing.assert_allclose([m["loss"] for m in resumed[STOP:]],
                             [m["loss"] for m in whole[STOP:]], rtol=RTOL)
  assert "data_restarted_at" not in resumed[STOP]


@pytest.mark.long
def test_fine_tuning_with_two_processes_equals_one(runs):
  """`pretrax finetune` runs on the same trainer: launched as two processes on a (2, 2, 2) mesh
  it takes the steps one process takes on the same mesh."""
  from pretrax.training import config as config_lib
  tmp = runs["tmp"]
  examples = os.path.join(tmp, "examples.jsonl")
  rng = np.random.default_rng(1)
  with open(examples, "w") as f:
    for i in range(40):
      f.write(json.dumps({"text": "".join(rng.choice(list("abcdef"), 20)), "label": i % 2}) + "\n")
  config = config_lib.apply_overrides(
      config_lib.load_preset("finetune:classify"),
      {"finetune.init": runs["one"], "data.train": examples, "data.seq_len": str(SEQ_LEN),
       "train.batch_size": str(BATCH), "train.steps": str(STOP), "train.log_every": "1",
       "train.eval_every": "0", "optimizer.warmup_steps": "1", "mesh.data": "2",
       "mesh.fsdp": "2", "mesh.tensor": "2"})
  two, one = os.path.join(tmp, "finetune_two"), os.path.join(tmp, "finetune_one")
  _train_with_two_processes_and_one(tmp, config, two, one)
  a, b = _metrics(two), _metrics(one)
  assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, STOP + 1))
  for key in ("loss", "cls_loss", "lm_loss", "accuracy"):
    np.testing.assert_allclose([m[key] for m in a], [m[key] for m in b], rtol=RTOL, err_msg=key)
  np.testing.assert_allclose([m["grad_norm"] for m in a], [m["grad_norm"] for m in b], rtol=1e-4)
  data_dir = os.path.join(two, "checkpoints", str(STOP), "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))


@pytest.mark.parametrize("mesh,devices", [((1, 8, 1), slice(0, 8)), ((2, 1, 2), slice(4, 8))],
                         ids=["1x8x1", "4_devices_2x1x2"])
def test_checkpoint_restores_onto_other_meshes_and_data_continues(runs, mesh, devices):
  """Steps 1-4 on (2, 2, 2), then steps 5-6 on another mesh: the losses of the uninterrupted
  (2, 2, 2) run, so parameters, optimizer state and data position all carried over."""
  import jax
  from pretrax.training import trainer
  copy = os.path.join(runs["tmp"], f"resumed_on_{'x'.join(map(str, mesh))}")
  shutil.copytree(runs["one"], copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", str(STEPS)))  # as if stopped after step 4
  config = _config(runs["tmp"], mesh=mesh, **{"train.eval_every": "0"})
  trainer.train(config, copy, devices=jax.devices()[devices])
  resumed, whole = _metrics(copy), _metrics(runs["one"])
  assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
  print(f"resumed on {mesh}: relative loss differences at steps 5, 6:",
        [abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(resumed[STOP:], whole[STOP:])])
  np.testing.assert_allclose([m["loss"] for m in resumed[STOP:]],
                             [m["loss"] for m in whole[STOP:]], rtol=RTOL)


# --------------------------------------------------------------------------------------------
# distributed.initialize: arguments and cluster detection (this process is single, its backend
# is up, so a call that reached jax.distributed.initialize fails at once and connects nowhere).

CLUSTER_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                     "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                     "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                     "MEGASCALE_COORDINATOR_ADDRESS")


def test_initialize_checks_its_arguments(monkeypatch):
  import jax
  from pretrax.training import distributed
  jax.devices()
  for name in CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  distributed.initialize()                           # one process, no cluster: nothing to do
  distributed.initialize("127.0.0.1:1234", 1, 0)     # --num_processes=1: nothing to do
  assert not jax.distributed.is_initialized()
  with pytest.raises(ValueError, match="missing --num_processes, --process_id"):
    distributed.initialize("127.0.0.1:1234")
  with pytest.raises(ValueError, match="missing --coordinator_address"):
    distributed.initialize(None, 2, 0)
  with pytest.raises(ValueError, match=r"--process_id must be in \[0, --num_processes=2\), got 2"):
    distributed.initialize("127.0.0.1:1234", 2, 2)
  with pytest.raises(ValueError, match="expected HOST:PORT"):
    distributed.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match="leave them out"):
    distributed.initialize("auto", 2, None)
  with pytest.raises(RuntimeError, match="before anything that uses JAX"):
    distributed.initialize("127.0.0.1:1234", 2, 0)


def test_cluster_detection_from_the_environment(monkeypatch):
  import jax
  from pretrax.training import distributed
  jax.devices()
  for name in CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  assert distributed.detect_cluster() is None
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  assert distributed.detect_cluster() is None        # srun with one task: a single process
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.detect_cluster() == "slurm"
  # A detected cluster goes to jax.distributed.initialize() (which refuses here: backend is up).
  with pytest.raises(RuntimeError, match="before anything that uses JAX"):
    distributed.initialize()
  for name in slurm:
    monkeypatch.delenv(name)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-0")
  assert distributed.detect_cluster() is None        # a single TPU host
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1")
  assert distributed.detect_cluster() == "tpu"
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.0.0.1:34911")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  assert distributed.detect_cluster() == "openmpi"


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker(sys.argv[2])
  else:
    sys.exit("usage: python tests/test_multihost.py --worker SPEC.json (spawned by the test)")
