"""The launchers' up-front checks and the distributed settings they feed; fast, no processes
beyond the scripts themselves (the real multi-process runs are in test_multiprocess.py)."""
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from gender_jax import parallel

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
sys.path.insert(0, str(LAUNCH))
import ray_job  # noqa: E402
import threading
import time
import types
import jax


def run(cmd, **env):
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "RAY_"))}
  return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                        env={**base, **env})


# ----------------------------------------------------------------------------- settings
def test_single_process_without_any_variables():
  assert parallel.distributed_settings({}) is None
  assert parallel.distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None


def test_explicit_settings():
  s = parallel.distributed_settings({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476",
                                     "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
                                     "GENDER_JAX_PEER_TIMEOUT": "9"})
  assert s["kind"] == "explicit" and s["num_processes"] == 4 and s["process_id"] == 3
  assert s["peer_timeout"] == 9 and s["init_timeout"] == 300


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID not"),
    ({"JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES not"),
    ({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2 is outside 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two' is not an integer"),
    ({"GENDER_JAX_PEER_TIMEOUT": "0"}, "GENDER_JAX_PEER_TIMEOUT=0 must be positive"),
])
def test_bad_settings_say_what_is_wrong(env, message):
  with pytest.raises(ValueError, match=message):
    parallel.distributed_settings(env)


SRUN = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_NODES": "2"}


@pytest.mark.parametrize("extra, local_ids", [
    ({}, [1]),                                        # a task per GPU, unbound: GPU #localid
    ({"CUDA_VISIBLE_DEVICES": "1"}, None),            # Slurm bound the task to its GPU
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, None),  # a task per node: all its GPUs
    ({"JAX_LOCAL_DEVICE_IDS": "2,3"}, [2, 3]),        # explicit choice wins
])
def test_slurm_settings(extra, local_ids):
  s = parallel.distributed_settings({**SRUN, **extra})
  assert s["kind"] == "slurm" and s["local_device_ids"] == local_ids
  assert s["process_id"] == int({**SRUN, **extra}["SLURM_PROCID"])


# ----------------------------------------------------------------------------- scripts
def test_local_sh_checks_its_arguments():
  r = run(["bash", "launch/local.sh"])
  assert r.returncode == 2 and "usage: launch/local.sh N" in r.stderr
  r = run(["bash", "launch/local.sh", "two", "--config", "c", "--workdir", "w"])
  assert r.returncode == 2 and "N must be a positive integer, got 'two'" in r.stderr
  r = run(["bash", "launch/local.sh", "2", "--config", "configs/demo.py"],
          PYTHON=sys.executable)
  assert r.returncode == 2 and "--workdir" in r.stderr
  r = run(["bash", "launch/local.sh", "2", "--config", "c", "--workdir", "w"],
          PYTHON="/nonexistent/python")
  assert r.returncode == 2 and "no '/nonexistent/python'" in r.stderr


def test_slurm_sbatch_refuses_to_run_outside_slurm():
  assert run(["bash", "-n", "launch/slurm.sbatch"]).returncode == 0
  r = run(["bash", "launch/slurm.sbatch", "--config", "c", "--workdir", "w"])
  assert r.returncode == 2
  assert "not inside a SLURM allocation (SLURM_JOB_ID SLURM_NTASKS SLURM_JOB_NODELIST unset)" \
      in r.stderr


def test_ray_job_checks_its_arguments(capsys, monkeypatch):
  monkeypatch.delenv("RAY_ADDRESS", raising=False)
  with pytest.raises(SystemExit):
    ray_job.parse_args(["--num-workers", "2", "--", "--config", "c"])
  err = capsys.readouterr().err
  assert "pass --address HOST:PORT or set RAY_ADDRESS" in err
  assert "pass --workdir after `--`" in err
  args = ray_job.parse_args(["--address", "h:6379", "--num-workers", "2", "--gpus-per-worker",
                             "8", "--", "--config", "c", "--workdir", "w", "--config.seed=1"])
  assert args.strategy == "STRICT_SPREAD"
  assert args.train_args == ["--config", "c", "--workdir", "w", "--config.seed=1"]


def test_kubernetes_manifest_wires_the_variables_parallel_reads():
  docs = list(yaml.safe_load_all((LAUNCH / "k8s" / "train-job.yaml").read_text()))
  service = next(d for d in docs if d["kind"] == "Service")
  job = next(d for d in docs if d["kind"] == "Job")
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
  assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
  env = {e["name"]: e for e in pod["containers"][0]["env"]}
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    assert name in env
  assert int(env["JAX_NUM_PROCESSES"]["value"]) == spec["completions"]
  assert "job-completion-index" in env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
  # Pod 0 of an indexed job is <job>-0, reachable as <job>-0.<service>.
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
  assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
  assert int(port) == service["spec"]["ports"][0]["port"]
  # The same settings parse as a real process would see them (pod 1).
  s = parallel.distributed_settings({"JAX_COORDINATOR_ADDRESS": env["JAX_COORDINATOR_ADDRESS"]
                                     ["value"], "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  assert s["process_id"] == 1


def test_peer_watchdog_survives_a_growing_peer_table(monkeypatch):
  errors = []
  monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
  dog = parallel.PeerWatchdog(timeout=1000, client=_GrowingStore())
  dog.interval = 0  # both threads in tight loops: the check iterates while the table grows
  check = threading.Thread(target=dog._check, daemon=True)
  beat = threading.Thread(target=dog._beat, daemon=True)
  check.start(), beat.start()
  time.sleep(1.5)
  alive = check.is_alive()
  dog._stop.set()
  check.join(5), beat.join(5)
  assert not errors, errors  # was: RuntimeError("dictionary changed size during iteration")
  assert alive and len(dog.last_seen) > 1000


def test_create_mesh_takes_devices_from_every_process(monkeypatch):
  # 2 processes × 4 devices; jax.devices() lists process 0's first.
  fake = [types.SimpleNamespace(id=i, process_index=i // 4) for i in range(8)]
  monkeypatch.setattr(jax, "devices", lambda: fake)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(parallel, "Mesh", lambda devices, *a, **k: list(devices))
  assert [d.id for d in parallel.create_mesh(4)] == [0, 1, 4, 5]  # was [0, 1, 2, 3]
  assert [d.id for d in parallel.create_mesh()] == list(range(8))
  with pytest.raises(ValueError, match="multiple of the 2 processes"):
    parallel.create_mesh(3)


class _GrowingStore:
  """A coordination-service stand-in whose directory gains new peers on every read."""

  def __init__(self):
    self.reads = 0

  def key_value_set(self, *args, **kwargs):
    pass

  def key_value_dir_get(self, prefix):
    self.reads += 1
    return [(f"{prefix}{p}", "1") for p in range(self.reads * 50, self.reads * 50 + 50)]
