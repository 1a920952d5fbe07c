"""Mesh, shardings, distributed initialisation and host→device batch transfer."""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Wires up several processes before anything touches devices.

  Explicit from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (what the Ray and
  Kubernetes launchers set), else JAX's own auto-detection (SLURM and friends), else a single
  process.
  """
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise RuntimeError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]),
        initialization_timeout=int(env.get("JAX_INIT_TIMEOUT", "300")))
  elif "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)


def create_mesh(num_devices: int | None = None) -> Mesh:
  """All devices (or the first `num_devices`) on one `data` axis.

  Auto axis types: with jax's default Explicit types some sharded contractions hang on CPU.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
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
