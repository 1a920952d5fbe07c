"""Checkpoints of the train state: `WORKDIR/checkpoints/<step>/`, all Orbax.

The full train state (params, batch stats, optimizer state, EMA, step, input position) plus
JSON metadata, saved async, keep-N latest plus the best on validation. Weight files live in
weights.py, the inference bundle in bundle.py.
"""
from __future__ import annotations

import os

import orbax.checkpoint as ocp


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


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         metrics: dict | None = None, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics, force=force)


def restore(directory_or_manager, abstract_state, step: int | None = None):
  """Restores (state, meta) into the abstract sharded target (any device count)."""
  manager = directory_or_manager
  if isinstance(manager, str):
    manager = ocp.CheckpointManager(os.path.abspath(manager), item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta
