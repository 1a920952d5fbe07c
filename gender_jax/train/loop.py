"""train_and_evaluate(config, workdir): the training loop, in labelled sections.

Order: logging → mesh → input (input.py) → model, optimizer, state and steps
(steps.create_train_setup) → load checkpoint → evals → loop → bundle.
"""
from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gender_jax import parallel
from gender_jax.train import metrics_writer as metrics_lib
from gender_jax.train import schedule as config_lib
from gender_jax.train import after, checkpoint, finite, resume
from gender_jax.inference.bundle import save_bundle
from gender_jax.models.weights import read_meta
from gender_jax.data import pipeline, preprocess
from gender_jax.data.sources import input_kinds
from gender_jax.train.steps import (create_train_setup,
                              inference_weights)
from gender_jax.train.input import create_train_input
from gender_jax.train.validation import Validation

# Steps dispatched ahead of the host before it waits. Unbounded async dispatch deadlocks
# XLA:CPU collectives on many fake devices (DESIGN.md); 2 also keeps a GPU busy.
MAX_STEPS_IN_FLIGHT = 2


# ----------------------------------------------------------------------------- preemption
class StopRequest:
  """SIGTERM (preemption) → save and leave at the next step every process agrees on."""

  def __init__(self):
    self.requested = False
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    logging.warning("received signal %d: will checkpoint and stop", signum)
    self.requested = True

  def agreed(self, step: int, every: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    # A collective, so every process calls it on the same steps.
    if step % every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))


# ----------------------------------------------------------------------------- main
def _first_step(train_step, state, batch):
  """The first call compiles (seconds to minutes): say so, and how long it took."""
  logging.info("compiling the train step…")
  t = time.perf_counter()
  out = train_step(state, batch)
  jax.block_until_ready(out[1])
  logging.info("compiled and ran the first step in %.1f s", time.perf_counter() - t)
  return out


def _fingerprint(config) -> str:
  """Hash of what determines the input stream; a resume warns if it changed."""
  keys = {"data": config.data.to_dict(), "seed": config.seed}
  return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _input_spec(config) -> tuple[dict, dict | None]:
  """The preprocessing spec, and init_from's metadata: ported weights expect their own input
  scaling, and a port's variant (torchvision/keras) decides the layer conventions; both are
  written into `config` (a copy), so config.json says what the run did."""
  if config.init_from:
    init_meta = read_meta(config.init_from)
    recorded = init_meta.get("model", init_meta)  # a bundle keeps its variant under "model"
    with config.unlocked():
      if "preprocessing" in init_meta:
        config.data.preprocessing = init_meta["preprocessing"]["preset"]
      if recorded.get("variant") and recorded["variant"] != config.model.get("variant"):
        config.model.variant = recorded["variant"]
  else:
    init_meta = None
  return preprocess.make_spec(config.data.image_size, config.data.preprocessing,
                              config.data.get("resize", "squash")), init_meta


def _log_train(writer, step: int, total_steps: int, pending: list, rate: float, schedule,
               config) -> None:
  summary = metrics_lib.summarize(functools.reduce(metrics_lib.accumulate, pending))
  summary.update(lr=float(schedule(step - 1)), img_per_sec=rate)  # the lr this step used
  writer.write_scalars(step, {f"train_{k}" if k not in ("lr", "img_per_sec") else k: v
                              for k, v in summary.items()})
  if jax.process_index() == 0:
    eta = (total_steps - step) * config.data.batch_size / max(rate, 1e-9)
    logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.2e  %.0f img/s  ETA %s",
                 step, total_steps, summary["loss"], summary["accuracy"], summary["lr"],
                 rate, _format_eta(eta))


def _write_bundle(config, workdir: str, setup, state, spec, step: int, last_eval: dict,
                  val_sources: dict) -> None:
  """The inference bundle from the weights validation scored (EMA when kept), then the
  steps `config.after_training` lists (after.py)."""
  params, batch_stats = jax.device_get(inference_weights(state))
  model = nnx.merge(setup.eval_graphdef, params, batch_stats)
  directory = os.path.join(workdir, "bundle")
  # The inputs it was trained on (faces, persons): predict's --faces auto reads them.
  extra = dict(step=int(step), metrics=last_eval,
               inputs=sorted(set(input_kinds(config).values())))
  save_bundle(directory, model, model_config=config.model.to_dict(),
              preprocessing=spec, extra=extra)
  logging.info("wrote inference bundle to %s", directory)
  after.run(config, directory, step=step, val_sources=val_sources)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and writes the inference bundle; returns final metrics."""
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  config = copy.deepcopy(config)  # made final here (init_from's variant and input scaling)
  spec, init_meta = _input_spec(config)

  # ---- logging
  writer = metrics_lib.create_writer(workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # ---- mesh
  mesh = parallel.create_mesh(config.mesh.num_devices or None)
  parallel.local_batch_size(config.data.batch_size, mesh)  # validates divisibility
  if config.data.eval_batch_size % mesh.size:
    raise ValueError(f"data.eval_batch_size={config.data.eval_batch_size} is not divisible by "
                     f"{mesh.size} devices")

  # ---- input
  inp = create_train_input(config, workdir)
  total_steps = inp.total_steps

  # ---- model & optimizer
  setup = create_train_setup(config, mesh, total_steps, spec, num_train=inp.num_train)
  train_step = setup.train_step
  validate = Validation(config, spec, mesh, inp.val_sources, setup.eval_graphdef,
                        threads=pipeline.input_parallelism(config)[0])

  # ---- load checkpoint
  manager = checkpoint.create_manager(os.path.join(workdir, "checkpoints"),
                                      keep=config.checkpoint.keep,
                                      best_metric=config.checkpoint.best_metric or None,
                                      async_save=config.checkpoint.async_save)
  fingerprint = _fingerprint(config)
  state = resume.load_state(config, setup, manager, fingerprint, init_meta)
  start_step = int(state["step"])

  def before_stop():  # the last good checkpoint stays whole; the logs say how it went
    manager.wait_until_finished()
    writer.flush()
  guard = finite.FiniteGuard(config, before_stop)

  def drain():
    """Waits for every step in flight and checks each one's loss and gradient norm."""
    while in_flight:
      guard.check(*in_flight.popleft())

  def save(step, metrics=None, force=False):
    drain()  # nothing non-finite is ever saved
    guard.check_state(state, step)
    meta = dict(step=step, data_position=step, data_fingerprint=fingerprint)
    checkpoint.save(manager, step, state, meta, metrics=metrics, force=force)

  # ---- loop
  stop = StopRequest()
  train_iter = iter(pipeline.train_dataset(config, start_step=start_step))
  in_flight: collections.deque = collections.deque()
  pending: list = []
  last_eval: dict[str, float] = {}
  t0, step0 = time.perf_counter(), start_step
  logging.info("training steps %d→%d, global batch %d on %d devices, %d train examples",
               start_step, total_steps, config.data.batch_size, mesh.size, inp.num_train)
  next_batch = parallel.put_batch(next(train_iter), mesh) if start_step < total_steps else None
  step = start_step
  while step < total_steps:
    batch = next_batch
    if step == start_step:
      state, step_metrics = _first_step(train_step, state, batch)
    else:
      state, step_metrics = train_step(state, batch)
    step += 1
    # Transfer the next batch while this step runs on the devices.
    next_batch = parallel.put_batch(next(train_iter), mesh) if step < total_steps else None
    in_flight.append((step, step_metrics))
    pending.append(step_metrics)
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
      guard.check(*in_flight.popleft())

    if step % config.log_every == 0 or step == total_steps:
      # Throughput over this log window only, so the first window's compile doesn't skew it.
      now = time.perf_counter()
      rate = (step - step0) * config.data.batch_size / (now - t0)
      t0, step0 = now, step
      _log_train(writer, step, total_steps, pending, rate, setup.schedule, config)
      pending = []

    is_eval = step % inp.eval_every == 0 or step == total_steps
    if is_eval:
      last_eval = validate(state)
      writer.write_scalars(step, last_eval)
      logging.info("eval at step %d: %s", step,
                   "  ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())))
    if is_eval or step % inp.ckpt_every == 0:
      save(step, metrics={k: float(v) for k, v in last_eval.items()} if is_eval else None)
    if stop.agreed(step, config.checkpoint.preemption_check_every) and step < total_steps:
      # This step may have just been saved (async): saving it again raises
      # StepAlreadyExistsError, which would turn a preemption (143) into a crash (1).
      manager.wait_until_finished()
      if manager.latest_step() != step:
        save(step, force=True)
        manager.wait_until_finished()
      logging.warning("stopped at step %d on request; checkpoint saved, rerun to resume", step)
      writer.flush()
      return dict(preempted=True, step=step, **last_eval)

  # The last step was saved (it validates), and save() drained and checked the state.
  manager.wait_until_finished()
  writer.flush()

  # ---- bundle
  _write_bundle(config, workdir, setup, state, spec, step, last_eval, inp.val_sources)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gender_jax: training done")
  return dict(preempted=False, step=step, **last_eval)
