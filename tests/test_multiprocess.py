"""Several real processes on loopback (CPU, gloo collectives, 2 fake devices each).

What is proven: 2 processes train to the same weights as 1 process over the same global
batches; a checkpoint written by 2 processes resumes in 1; a peer that never arrives or
dies makes the others stop with an error naming it, within the configured timeout;
SLURM's environment is understood; launch/ray_job.py trains on a real local Ray cluster, and
with --max-restarts starts the worker group again from the last checkpoint when a trainer dies.

Every subprocess runs in its own session and is SIGKILLed on timeout: a process stuck in a
gloo collective ignores SIGTERM.
"""
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from gender_jax import parallel
from tests.xla_flags import xla_flags
from gender_jax.models.weights import load_weights
import json
import textwrap
from tests.fixtures import datasets as fixtures

pytestmark = pytest.mark.multiprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICES_PER_PROCESS = 2

TINY_CONFIG = """
from configs.demo import get_config as demo


def get_config():
  config = demo()
  config.data.sources.synthetic.train_size = 256
  config.data.sources.synthetic.validation_size = 32
  config.data.batch_size = 16
  config.data.eval_batch_size = 16
  config.total_epochs = None
  config.total_steps = 4
  config.eval_every_epochs = None
  config.optimizer.warmup_steps = 1
  config.log_every = 2
  config.checkpoint.checkpoint_every_steps = 2
  config.checkpoint.keep = 4
  config.checkpoint.async_save = False
  return config
"""

# A minimal distributed program: joins through parallel.initialize_distributed, then runs a
# cross-process all-reduce in a loop (forever with no argument), like a training step.
COLLECTIVE_WORKER = """
import sys, time
import jax, numpy as np
from gender_jax import parallel
parallel.initialize_distributed()
mesh = parallel.create_mesh()
total = jax.jit(lambda x: x.sum(), out_shardings=parallel.replicated(mesh))
x = parallel.put_batch({"x": np.ones((jax.local_device_count(), 4), np.float32)}, mesh)["x"]
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 0
i = 0
while not steps or i < steps:
  value = float(total(x))
  i += 1
  if i == 3:
    print(f"READY process {jax.process_index()} sum {value}", flush=True)
  time.sleep(0.05)
print(f"DONE process {jax.process_index()} of {jax.process_count()} sum {value}", flush=True)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def port_is_free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
      return True
    except OSError:
      return False


def clean_env(devices: int = DEVICES_PER_PROCESS, **extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_", "SLURM_", "GENDER_JAX_", "RAY_"))}
  env.update(XLA_FLAGS=xla_flags(devices),
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=str(ROOT))
  env.update({k: str(v) for k, v in extra.items()})
  return env


class Proc:
  """A subprocess in its own session, output to a file, always SIGKILLed in the end."""

  def __init__(self, cmd, env, log: pathlib.Path, cwd=ROOT):
    self.log = log
    self.file = open(log, "w")
    self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.file, stderr=subprocess.STDOUT,
                              start_new_session=True)

  def output(self) -> str:
    if not self.file.closed:
      self.file.flush()
    return self.log.read_text(errors="replace")

  def wait(self, timeout: float) -> int:
    try:
      return self.p.wait(timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"{self.p.args} still running after {timeout:.0f} s; SIGKILLed. Output tail:\n"
                  + self.output()[-3000:])

  def wait_for(self, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in self.output():
      if self.p.poll() is not None or time.monotonic() > deadline:
        pytest.fail(f"never printed {text!r} (rc {self.p.poll()}):\n" + self.output()[-3000:])
      time.sleep(0.2)

  def kill(self) -> None:
    try:
      os.killpg(self.p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self.p.wait()
    if not self.file.closed:
      self.file.close()


@pytest.fixture
def procs():
  started = []
  yield started
  for p in started:
    p.kill()


def start_workers(procs, tmp_path, n=2, args=(), **env):
  port = free_port()
  for i in range(n):
    procs.append(Proc([sys.executable, "-c", COLLECTIVE_WORKER, *args],
                      clean_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=n,
                                JAX_PROCESS_ID=i, **env), tmp_path / f"p{i}.log"))
  return procs


# ----------------------------------------------------------------------------- failures
def test_a_peer_that_never_arrives_is_named(procs, tmp_path):
  """Process 0 of 2 alone, and process 1 of 2 alone: each gives up after the init timeout."""
  port0, port1 = free_port(), free_port()
  alone0 = Proc([sys.executable, "-c", COLLECTIVE_WORKER],
                clean_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port0}", JAX_NUM_PROCESSES=2,
                          JAX_PROCESS_ID=0, GENDER_JAX_INIT_TIMEOUT=3), tmp_path / "0.log")
  alone1 = Proc([sys.executable, "-c", COLLECTIVE_WORKER],
                clean_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port1}", JAX_NUM_PROCESSES=2,
                          JAX_PROCESS_ID=1, GENDER_JAX_INIT_TIMEOUT=3), tmp_path / "1.log")
  procs += [alone0, alone1]
  assert alone0.wait(120) == parallel.EXIT_PEER_LOST, alone0.output()[-2000:]
  assert alone1.wait(120) == parallel.EXIT_PEER_LOST, alone1.output()[-2000:]
  out0, out1 = alone0.output(), alone1.output()
  assert "process 0 of 2: distributed initialisation timed out after 3 s" in out0
  assert "process 1 never connected to this coordinator" in out0
  assert "process 0 (the coordinator) is not listening" in out1


@pytest.mark.parametrize("victim", [1, 0], ids=["peer", "coordinator"])
def test_killing_one_process_stops_the_other(procs, tmp_path, victim):
  timeout = 4
  start_workers(procs, tmp_path, GENDER_JAX_PEER_TIMEOUT=timeout)
  for p in procs:
    p.wait_for("READY", 180)
  survivor = procs[1 - victim]
  t0 = time.monotonic()
  os.killpg(procs[victim].p.pid, signal.SIGKILL)
  rc = survivor.wait(timeout + 30)  # margin for a loaded 2-core machine
  elapsed = time.monotonic() - t0
  out = survivor.output()
  assert rc != 0 and elapsed < timeout + 30, out[-2000:]
  if rc == parallel.EXIT_PEER_LOST:
    # The watchdog noticed first, and names who is gone: the dead peer, or the coordinator.
    assert ("process 0 of 2: process 1 sent no heartbeat for over 4 s" in out if victim == 1
            else "no answer from the coordinator (process 0" in out), out[-2000:]
  else:
    # JAX or gloo noticed first and aborted with its own line: the coordination service
    # reporting the lost task, or gloo's socket closed under the all-reduce. Usual for a dead
    # coordinator; for a dead peer seen once, in CI under load.
    assert rc == -signal.SIGABRT, f"rc {rc}:\n{out[-2000:]}"
    assert any(s in out for s in ("another task died", "Connection closed by peer",
                                  "Connection reset by peer")), out[-2000:]


def test_slurm_environment_is_detected(procs, tmp_path):
  """The variables `srun` sets, on loopback: the coordinator is derived from the node list."""
  job_id = next(j for j in np.random.default_rng().permutation(4096)
                if port_is_free(int(j) + 65535 - 2 ** 12 + 1))  # JAX's port rule for SLURM
  for i in range(2):
    procs.append(Proc([sys.executable, "-c", COLLECTIVE_WORKER, "5"], clean_env(
        SLURM_JOB_ID=job_id, SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=2, SLURM_PROCID=i,
        SLURM_LOCALID=i, SLURM_STEP_NUM_NODES=1), tmp_path / f"s{i}.log"))
  for i, p in enumerate(procs):
    assert p.wait(180) == 0, p.output()[-2000:]
    # 2 processes × 2 devices × ones(1, 4): the all-reduce saw everyone's data.
    assert f"DONE process {i} of 2 sum 16.0" in p.output()


# ----------------------------------------------------------------------------- training
def tiny_config(directory: pathlib.Path) -> pathlib.Path:
  path = directory / "tiny_config.py"
  path.write_text(TINY_CONFIG)
  return path


def train_single(config, workdir, log, devices=2 * DEVICES_PER_PROCESS):
  p = Proc([sys.executable, "-m", "gender_jax.train", "--config", str(config), "--workdir",
            str(workdir)], clean_env(devices), log)
  try:
    assert p.wait(400) == 0, p.output()[-3000:]
  finally:
    p.kill()
  return p.output()


def assert_same_weights(a, b, rtol=1e-4, atol=1e-5):
  (wa, _), (wb, _) = load_weights(a), load_weights(b)
  assert wa.keys() == wb.keys()
  worst = max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)
  for k in wa:
    np.testing.assert_allclose(wa[k], wb[k], rtol=rtol, atol=atol, err_msg=k)
  return worst


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """4 steps on 2 processes × 2 devices through launch/local.sh."""
  tmp = tmp_path_factory.mktemp("two")
  config = tiny_config(tmp)
  p = Proc(["bash", str(ROOT / "launch" / "local.sh"), "2", "--config", str(config),
            "--workdir", str(tmp / "run")],
           clean_env(PYTHON=sys.executable, GENDER_JAX_PEER_TIMEOUT=60), tmp / "local.log")
  try:
    assert p.wait(400) == 0, p.output()[-3000:]
  finally:
    p.kill()
  return dict(config=config, workdir=tmp / "run", output=p.output())


@pytest.mark.slow
def test_two_processes_train_like_one(two_process_run, tmp_path):
  out = two_process_run["output"]
  assert "[0]" in out and "[1]" in out and "on 4 devices" in out
  # Only process 0 writes logs and metrics.
  assert out.count("step 4/4") == 1
  train_single(two_process_run["config"], tmp_path / "one", tmp_path / "one.log")
  worst = assert_same_weights(two_process_run["workdir"] / "bundle", tmp_path / "one" / "bundle")
  print(f"max |w_2proc - w_1proc| = {worst:.2e}")


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one(two_process_run, tmp_path):
  """Step 2 of the 2-process run, resumed by 1 process (4 devices), ends where 2 processes did."""
  workdir = tmp_path / "resumed"
  shutil.copytree(two_process_run["workdir"] / "checkpoints", workdir / "checkpoints")
  for step in (workdir / "checkpoints").iterdir():
    if step.name.isdigit() and int(step.name) > 2:
      shutil.rmtree(step)
  out = train_single(two_process_run["config"], workdir, tmp_path / "resumed.log")
  assert "at step 2" in out and "training steps 2→4" in out
  assert_same_weights(two_process_run["workdir"] / "bundle", workdir / "bundle")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
  """`ray start --head` on loopback with 2 CPUs, once for this module's Ray tests: its
  address, and the environment (its own auth token) a driver needs to join it."""
  pytest.importorskip("ray")
  port = free_port()
  ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
  bin_dir = pathlib.Path(sys.executable).parent
  # `ray start` turns on token authentication; this cluster gets its own token.
  auth = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(32).hex())
  head = Proc([str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
               "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
              clean_env(**auth), tmp_path_factory.mktemp("ray") / "head.log")
  try:
    head.wait_for("Ray runtime started", 180)
    yield f"127.0.0.1:{port}", clean_env(**auth)
  finally:
    head.p.send_signal(signal.SIGTERM)  # `ray start --block` stops its cluster on SIGTERM
    try:
      head.p.wait(30)
    except subprocess.TimeoutExpired:
      pass
    head.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_job(address: str, env: dict, log, *args) -> Proc:
  """launch/ray_job.py with 2 one-CPU workers of DEVICES_PER_PROCESS devices each."""
  return Proc([sys.executable, str(ROOT / "launch" / "ray_job.py"), "--address", address,
               "--num-workers", "2", "--cpus-per-worker", "1",
               "--env", f"XLA_FLAGS={xla_flags(DEVICES_PER_PROCESS)}",
               "--env", "JAX_PLATFORMS=cpu", *args], env, log)


@pytest.mark.slow
def test_ray_job_on_a_local_cluster(two_process_run, ray_cluster, tmp_path):
  """ray_job.py on a real local Ray cluster runs the same 2-process training."""
  job = ray_job(*ray_cluster, tmp_path / "job.log", "--", "--config",
                str(two_process_run["config"]), "--workdir", str(tmp_path / "ray_run"))
  try:
    assert job.wait(400) == 0, job.output()[-4000:]
  finally:
    job.kill()
  out = job.output()
  assert "worker exit statuses [0, 0]" in out and "on 4 devices" in out
  assert_same_weights(two_process_run["workdir"] / "bundle", tmp_path / "ray_run" / "bundle")


def _wait_for_pattern(proc: Proc, pattern: str, timeout: float) -> re.Match:
  deadline = time.monotonic() + timeout
  while True:
    found = re.search(pattern, proc.output())
    if found:
      return found
    if proc.p.poll() is not None or time.monotonic() > deadline:
      pytest.fail(f"never printed {pattern!r} (rc {proc.p.poll()}):\n" + proc.output()[-3000:])
    time.sleep(0.2)


@pytest.mark.slow
def test_killed_worker_restarts_the_group_from_the_last_checkpoint(ray_cluster, tmp_path):
  """--max-restarts: a trainer killed mid-run (SIGKILL, as a lost node leaves it) makes the
  driver start the worker group again, which resumes from the last checkpoint."""
  workdir = tmp_path / "ray_run"
  job = ray_job(*ray_cluster, tmp_path / "job.log", "--max-restarts", "2",
                "--env", "GENDER_JAX_PEER_TIMEOUT=20", "--",
                "--config", str(tiny_config(tmp_path)), "--config.total_steps=12",
                "--workdir", str(workdir))
  try:
    pid = int(_wait_for_pattern(job, r"\[1\] trainer PID (\d+)", 240).group(1))
    # Once step 2's checkpoint is written, the trainer of worker 1 dies as on a lost node.
    deadline = time.monotonic() + 400
    while not (workdir / "checkpoints" / "2").is_dir():
      assert time.monotonic() < deadline and job.p.poll() is None, job.output()[-3000:]
      time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    assert job.wait(600) == 0, job.output()[-4000:]
  finally:
    job.kill()
  out = job.output()
  assert "restarting the group from the last checkpoint (restart 1 of 2)" in out, out[-4000:]
  assert "resumed from" in out and "worker exit statuses [0, 0]" in out
  assert (workdir / "bundle" / "meta.json").exists()


# -------------------------------------------------- data shards across processes


WORKER = textwrap.dedent("""
    import json, sys
    from gender_jax import parallel
    parallel.initialize_distributed()
    import jax
    from configs.common import get_base_config
    from gender_jax.data import pipeline, preprocess, sources
    folder, data_dir, out = sys.argv[1:4]
    config = get_base_config()
    with config.unlocked():
      config.data.sources["folder"] = dict(path=folder, data_dir=data_dir, weight=1.0,
                                           crop="none", flip=False)
      config.data.update(dict(image_size=32, batch_size=2, read_threads=1, num_workers=0))
    train = sources.get_source("folder", "train", config)
    index = {preprocess.eval_image(train[i]["image"], 32).tobytes(): i for i in range(len(train))}
    it = iter(pipeline.train_dataset(config))  # process index and count from jax.distributed
    steps = len(train) // 2
    seen = [index[img.tobytes()] for _ in range(steps) for img in next(it)["image"]]
    json.dump(dict(process=jax.process_index(), count=jax.process_count(), n=len(train),
                   seen=seen), open(out, "w"))
""")


@pytest.mark.multiprocess
def test_two_processes_on_loopback_read_disjoint_shards(tmp_path):
  fixtures.folder(str(tmp_path / "f"), per_class=10)
  # Prepare once up front, so the two processes only read.
  from gender_jax.data import prepare
  prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu", PYTHONPATH=repo,
               XLA_FLAGS=xla_flags(1))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "f"), str(tmp_path / "d"),
         str(tmp_path / f"out{pid}.json")], env=env, cwd=repo,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  try:
    for p in procs:
      out, _ = p.communicate(timeout=240)
      assert p.returncode == 0, out.decode()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()  # a process stuck in a collective ignores SIGTERM
  results = [json.load(open(tmp_path / f"out{pid}.json")) for pid in range(2)]
  assert sorted(r["process"] for r in results) == [0, 1] and results[0]["count"] == 2
  a, b = (set(r["seen"]) for r in results)
  assert not a & b
  assert sorted(results[0]["seen"] + results[1]["seen"]) == list(range(results[0]["n"]))
