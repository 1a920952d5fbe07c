"""Checkpoints of the train state: `WORKDIR/checkpoints/<step>/`, all Orbax.

The full train state (params, batch stats, optimizer state, EMA, step, input position) plus
JSON metadata, saved async, keep-N latest plus the best on validation. Weight files live in
weights.py, the inference bundle in bundle.py.

Every step proves itself: a sha256 of each part of the state is computed from the values at
save and recorded in the step's metadata, and a restore recomputes it from what was read, so a
flipped bit in a data file (which Orbax and tensorstore read without complaint) fails the
restore like a missing or truncated file does. The trainer then sets the step aside
(`set_aside`: moved, never deleted) and resumes from the newest step that restores.
"""
from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

SET_ASIDE_DIR = "checkpoints_set_aside"  # next to checkpoints/, outside Orbax's step listing


class CheckpointDamaged(ValueError):
  """A step's files restore to something other than what was saved."""


def create_manager(directory: str, *, keep: int, best_metric: str | None,
                   async_save: bool = True) -> ocp.CheckpointManager:
  policies = [ocp.checkpoint_managers.LatestN(keep)]
  if best_metric:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save, create=True,
      # The best checkpoint is chosen on this metric (`manager.best_step()`).
      best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def _local(x):
  # The state is replicated: any one copy is the value (a multi-process array is not fully
  # addressable, but its local copy is whole).
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return x.addressable_data(0)
  return x


def digest(state) -> dict[str, str]:
  """sha256 per top-level part of the state (params, opt_state, …) over paths, dtypes,
  shapes and bytes: what a restore must give back exactly."""
  out = {}
  for part in sorted(state):
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(state[part])[0]
    values = jax.device_get([_local(leaf) for _, leaf in flat])  # one transfer per part
    for (path, _), value in zip(flat, values):
      value = np.ascontiguousarray(value)
      h.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|".encode())
      h.update(value.tobytes())
    out[part] = h.hexdigest()
  return out


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         metrics: dict | None = None, force: bool = False) -> bool:
  meta = dict(meta, sha256=digest(state))
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics, force=force)


def verify(state, meta: dict, step) -> None:
  """Raises CheckpointDamaged when a restored part differs from its checksum at save.
  Steps saved before checksums were recorded have none to check."""
  recorded = meta.get("sha256") or {}
  found = digest({k: v for k, v in state.items() if k in recorded})
  bad = sorted(k for k in found if found[k] != recorded[k])
  if bad:
    raise CheckpointDamaged(f"step {step}: {', '.join(bad)} differ from the checksum recorded "
                            "at save (the files changed since)")


def restore(directory_or_manager, abstract_state, step: int | None = None):
  """Restores (state, meta) into the abstract sharded target (any device count), checked
  against the checksums recorded at save."""
  manager = directory_or_manager
  if isinstance(manager, str):
    manager = ocp.CheckpointManager(os.path.abspath(manager), item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  verify(restored.state, restored.meta, step)
  return restored.state, restored.meta


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves a step that does not restore out of the manager's sight (never deletes it), to
  `checkpoints_set_aside/<step>` next to the checkpoints; returns where it went."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory).rstrip("/")), SET_ASIDE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target, n = os.path.join(target_dir, str(step)), 1
  while os.path.exists(target):  # an earlier damaged copy of the same step stays too
    n += 1
    target = os.path.join(target_dir, f"{step}.{n}")
  os.rename(source, target)
  return target
