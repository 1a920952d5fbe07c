"""Mesh, shardings, distributed initialisation and host→device batch transfer.

Several processes (one per host, or one per GPU) are wired up by `initialize_distributed()`
before anything touches devices. Where the processes come from:
- explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES,
  JAX_PROCESS_ID — what launch/local.sh, launch/ray_job.py and the Kubernetes Job set
  (optional JAX_LOCAL_DEVICE_IDS=0,1: the GPUs this process uses; default all it sees);
- SLURM (`srun`): JAX's own detection from SLURM_JOB_ID / SLURM_STEP_NODELIST / SLURM_NTASKS /
  SLURM_PROCID / SLURM_LOCALID;
- otherwise a single process.

A missing peer is an error, never a hang: initialisation gives up after
GENDER_JAX_INIT_TIMEOUT seconds (default 300) saying who is unreachable, and once training
runs a watchdog stops this process with exit code 75 when a peer has been silent for
GENDER_JAX_PEER_TIMEOUT seconds (default 60) — a process stuck in a cross-host collective
cannot notice that by itself (and ignores SIGTERM).
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# A peer vanished: retryable, so schedulers restart the job (which then resumes).
EXIT_PEER_LOST = 75

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# ----------------------------------------------------------------------------- initialisation
def distributed_settings(env: Mapping[str, str] = os.environ) -> dict | None:
  """Which multi-process setup `env` describes: a dict, or None for a single process.

  Raises ValueError naming every missing or malformed variable.
  """
  init_timeout = _positive_int(env, "GENDER_JAX_INIT_TIMEOUT", 300)
  peer_timeout = _positive_int(env, "GENDER_JAX_PEER_TIMEOUT", 60)
  given = [k for k in _EXPLICIT_VARS if env.get(k)]
  if given:
    missing = [k for k in _EXPLICIT_VARS if not env.get(k)]
    if missing:
      raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: a multi-process "
                       f"run needs all of {', '.join(_EXPLICIT_VARS)}")
    address = env["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={address!r} is not host:port")
    num_processes = _positive_int(env, "JAX_NUM_PROCESSES", None)
    process_id = _int(env, "JAX_PROCESS_ID")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"JAX_PROCESS_ID={process_id} is outside 0..{num_processes - 1} "
                       f"(JAX_NUM_PROCESSES={num_processes})")
    local_ids = ([int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
                 if env.get("JAX_LOCAL_DEVICE_IDS") else None)
    return dict(kind="explicit", coordinator_address=address, num_processes=num_processes,
                process_id=process_id, local_device_ids=local_ids, init_timeout=init_timeout,
                peer_timeout=peer_timeout)
  if all(k in env for k in _SLURM_VARS) and _int(env, "SLURM_NTASKS") > 1:
    # JAX derives the coordinator (first node, port from the job id) the same way on every task.
    tasks_here = (_int(env, "SLURM_NTASKS_PER_NODE") if env.get("SLURM_NTASKS_PER_NODE") else
                  _int(env, "SLURM_NTASKS") // max(_int(env, "SLURM_STEP_NUM_NODES")
                                                   if env.get("SLURM_STEP_NUM_NODES") else 1, 1))
    local_ids = None  # every GPU this task sees: one task per node, or Slurm-bound GPUs
    if env.get("JAX_LOCAL_DEVICE_IDS"):
      local_ids = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    elif tasks_here > 1 and not env.get("CUDA_VISIBLE_DEVICES"):
      local_ids = [_int(env, "SLURM_LOCALID")]  # one task per GPU, unbound: take GPU #localid
    return dict(kind="slurm", coordinator_address=None, num_processes=_int(env, "SLURM_NTASKS"),
                process_id=_int(env, "SLURM_PROCID"), local_device_ids=local_ids,
                init_timeout=init_timeout, peer_timeout=peer_timeout)
  return None


def initialize_distributed(env: Mapping[str, str] = os.environ) -> dict | None:
  """Joins the other processes (see the module docstring); a no-op for a single process.

  Returns the settings used. Must run before anything touches devices.
  """
  settings = distributed_settings(env)
  if settings is not None:
    # Cross-process collectives on CPU (tests, CPU clusters); GPUs use NCCL regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _connect(settings)
    PeerWatchdog(settings["peer_timeout"]).start()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  return settings


def _connect(settings: dict) -> None:
  """jax.distributed.initialize, bounded: a clear error instead of a hang or a bare abort."""
  timeout = settings["init_timeout"]
  pid, n = settings["process_id"], settings["num_processes"]
  done = threading.Event()

  def give_up():
    if done.wait(timeout):
      return
    address = settings["coordinator_address"] or "(derived from SLURM_STEP_NODELIST)"
    if pid == 0:
      others = "process 1 never connected" if n == 2 else \
          f"not all of processes 1..{n - 1} connected"
      who = (f"{others} to this coordinator at {address}: check that they run, with "
             f"JAX_NUM_PROCESSES={n}, and can reach this host and port")
    elif settings["coordinator_address"] and not _reachable(settings["coordinator_address"]):
      who = (f"process 0 (the coordinator) is not listening at {address}: it is not running, "
             "or that host:port is not reachable from here")
    else:
      who = (f"the coordinator at {address} is up, but not all {n} processes joined it: "
             "another process is missing or was started with different settings")
    _die(f"process {pid} of {n}: distributed initialisation timed out after {timeout} s: {who}.")

  threading.Thread(target=give_up, name="init-timeout", daemon=True).start()
  # JAX's own deadline is later, so the error above (which names who is missing) wins.
  address = settings["coordinator_address"]
  if settings["kind"] == "slurm":
    # JAX's own rule (first node of the step, port from the job id), asked here so that the
    # device choice below is ours: JAX would pin every task to GPU SLURM_LOCALID, wrong for
    # one task per node (all its GPUs) and for tasks Slurm already bound to their own GPUs.
    from jax._src.clusters import SlurmCluster
    address = SlurmCluster.get_coordinator_address(timeout, None)
  jax.distributed.initialize(
      coordinator_address=address, num_processes=n, process_id=pid,
      local_device_ids=settings.get("local_device_ids"), cluster_detection_method="deactivate",
      initialization_timeout=timeout + 30,
      # The watchdog below reports a dead peer first; JAX's heartbeat is the backstop.
      heartbeat_timeout_seconds=2 * settings["peer_timeout"] + 10,
      shutdown_timeout_seconds=settings["peer_timeout"])
  done.set()


def _reachable(address: str, timeout: float = 2.0) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
      return True
  except OSError:
    return False


def _die(message: str) -> None:
  """Exits now, from any thread: the main one may be blocked inside a collective for good."""
  print(f"FATAL: {message}", file=sys.stderr, flush=True)
  os._exit(EXIT_PEER_LOST)


def _int(env, key):
  try:
    return int(env[key])
  except ValueError:
    raise ValueError(f"{key}={env[key]!r} is not an integer") from None


def _positive_int(env, key, default):
  if not env.get(key):
    return default
  value = _int(env, key)
  if value <= 0:
    raise ValueError(f"{key}={value} must be positive")
  return value


# ----------------------------------------------------------------------------- peer watchdog
class PeerWatchdog:
  """Every process publishes a heartbeat in the coordination service's key-value store and
  watches everyone else's; a peer silent for `timeout` seconds, one that left while this
  process still runs, or a lost coordinator ends this process with an error naming them.

  Two threads: one does the RPCs (which may block when the coordinator is gone), one only
  reads timestamps, so the verdict never waits on the network.
  """

  PREFIX = "gender_jax/alive/"

  def __init__(self, timeout: float, client=None):
    from jax._src import distributed
    self.client = client or distributed.global_state.client
    self.address = distributed.global_state.coordinator_address
    self.timeout = float(timeout)
    self.interval = min(max(self.timeout / 10, 0.2), 5.0)
    self.pid, self.count = jax.process_index(), jax.process_count()
    now = time.monotonic()
    self.last_ok = now
    self.last_seen = {p: now for p in range(self.count) if p != self.pid}
    self.last_value: dict[int, str] = {}
    self.left_at: dict[int, float] = {}
    self.last_error = ""
    self._stop = threading.Event()
    # _beat adds peers to last_seen/left_at while _check reads them: without the lock,
    # iterating a dict that grows raises "dictionary changed size" and the watchdog dies.
    self._lock = threading.Lock()

  def start(self) -> "PeerWatchdog":
    if self.count > 1:
      threading.Thread(target=self._beat, name="peer-heartbeat", daemon=True).start()
      threading.Thread(target=self._check, name="peer-watchdog", daemon=True).start()
      atexit.register(self.leave)
    return self

  def leave(self) -> None:
    """Tells the others this process is exiting on purpose, and stops watching them."""
    if self._stop.is_set():
      return
    self._stop.set()
    try:
      self.client.key_value_set(f"{self.PREFIX}{self.pid}", "left", allow_overwrite=True)
    except Exception:  # noqa: BLE001 — the coordinator may already be gone at exit
      pass

  def _beat(self) -> None:
    beat = 0
    while not self._stop.is_set():
      beat += 1
      try:
        self.client.key_value_set(f"{self.PREFIX}{self.pid}", str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(self.PREFIX))
        now = time.monotonic()
        self.last_ok = now
        with self._lock:
          for key, value in values.items():
            peer = int(key.rsplit("/", 1)[-1])
            if peer == self.pid or value == self.last_value.get(peer):
              continue
            self.last_value[peer] = value
            if value == "left":
              self.left_at.setdefault(peer, now)
            else:
              self.last_seen[peer] = now
      except Exception as e:  # noqa: BLE001 — judged by _check through last_ok
        self.last_error = str(e).splitlines()[0][:200]
      self._stop.wait(self.interval)

  def _check(self) -> None:
    while not self._stop.wait(self.interval):
      now = time.monotonic()
      prefix = f"process {self.pid} of {self.count}"
      if now - self.last_ok > self.timeout:
        _die(f"{prefix}: no answer from the coordinator (process 0 at {self.address}) for "
             f"{now - self.last_ok:.0f} s (GENDER_JAX_PEER_TIMEOUT={self.timeout:g}): process 0 "
             f"died or the network is down. Last error: {self.last_error or 'none'}")
      with self._lock:  # snapshots: the heartbeat thread keeps writing
        left_at, last_seen = dict(self.left_at), dict(self.last_seen)
      left = sorted(p for p, t in left_at.items() if now - t > self.timeout)
      silent = sorted(p for p, t in last_seen.items()
                      if p not in left_at and now - t > self.timeout)
      if silent or left:
        parts = []
        if silent:
          parts.append(f"{_names(silent)} sent no heartbeat for over {self.timeout:g} s "
                       "(killed, crashed, or its host is gone)")
        if left:
          parts.append(f"{_names(left)} exited while this process still runs (an error "
                       "there? see its log)")
        _die(f"{prefix}: {'; '.join(parts)} (GENDER_JAX_PEER_TIMEOUT={self.timeout:g}). "
             "Stopping: the collectives cannot complete without it. Restart the whole job; "
             "it resumes from the last checkpoint.")


def _names(ids: list[int]) -> str:
  return f"process {ids[0]}" if len(ids) == 1 else f"processes {', '.join(map(str, ids))}"


# ----------------------------------------------------------------------------- mesh & batches
def create_mesh(num_devices: int | None = None) -> Mesh:
  """All devices (or `num_devices`, as many from each process) on one `data` axis.

  Every process must own devices of the mesh, the same number each: `put_batch` gives each
  process's slice of the batch to its own devices, so the first n of the global list (all
  on process 0) would break it on several hosts.
  Auto axis types: with jax's default Explicit types some sharded contractions hang on CPU.
  """
  devices = jax.devices()
  if num_devices:
    count = jax.process_count()
    per_process = num_devices // count
    by_process = [[d for d in devices if d.process_index == p] for p in range(count)]
    if num_devices % count or per_process > min(len(ds) for ds in by_process):
      raise ValueError(
          f"mesh.num_devices={num_devices}: must be a multiple of the {count} processes and at "
          f"most {count} × {min(len(ds) for ds in by_process)} (devices per process)")
    devices = [d for ds in by_process for d in ds[:per_process]]
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  if global_batch_size % mesh.size:
    raise ValueError(f"batch size {global_batch_size} is not divisible by {mesh.size} devices")
  return global_batch_size // jax.process_count()


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh):
  """This process's slice of the global batch → one global array per key, sharded on `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def persistent_compilation_cache() -> None:
  """XLA's on-disk cache of compiled programs, so a restart or resume of a run (a preempted
  job, a crashed host) skips the compiles: ~20 s of 33 s from launch to step 0 on CPU, minutes
  for a large model on a GPU. `JAX_COMPILATION_CACHE_DIR` (read by JAX itself) wins;
  `GENDER_JAX_XLA_CACHE=DIR` moves ours, `=off` turns it off."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax
  path = os.environ.get("GENDER_JAX_XLA_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gender_jax", "xla")
  if path != "off":  # an entry per program (~0.3 MB for ResNet-18); delete the folder to clear
    jax.config.update("jax_compilation_cache_dir", path)
