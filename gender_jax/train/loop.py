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
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gender_jax import cli, parallel
from gender_jax.train import metrics_writer as metrics_lib
from gender_jax.train import schedule as config_lib
from gender_jax.train import after, checkpoint
from gender_jax.inference.bundle import save_bundle
from gender_jax.models.weights import load_pretrained, read_meta
from gender_jax.data import pipeline, preprocess
from gender_jax.data.sources import input_kinds
from gender_jax.models import create_model
from gender_jax.train.steps import (create_train_setup,
                              inference_weights)
from gender_jax.train.input import create_train_input
from gender_jax.train.validation import Validation

# Steps dispatched ahead of the host before it waits. Unbounded async dispatch deadlocks
# XLA:CPU collectives on many fake devices (DESIGN.md); 2 also keeps a GPU busy.
MAX_STEPS_IN_FLIGHT = 2


class TrainingFailed(RuntimeError):
  """The run cannot go on (a non-finite loss, gradient or weights; no checkpoint restores):
  no bundle is written and the command exits 1 with this one line."""


# ----------------------------------------------------------------------------- finite or nothing
@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class FiniteGuard:
  """Each step's loss and gradient norm, read on the host a bounded number of steps behind
  (MAX_STEPS_IN_FLIGHT), must be finite: the run stops after `config.max_nonfinite_steps`
  + 1 bad steps in a row (the train step skips bad updates when that is > 0)."""

  def __init__(self, config, before_stop=lambda: None):
    self.allowed = int(config.get("max_nonfinite_steps", 0))
    self.config, self.before_stop, self.bad_in_row = config, before_stop, 0

  def _stop(self, message: str):
    self.before_stop()
    raise TrainingFailed(message)

  def hint(self) -> str:
    lr = self.config.optimizer.lr
    clip = ("" if self.config.optimizer.grad_clip_norm else
            " or set optimizer.grad_clip_norm (e.g. 1.0)")
    return (f"the run diverged: lower optimizer.lr (now {lr:g}){clip}; a rerun resumes from the "
            "last checkpoint, which holds finite weights")

  def check(self, step: int, metrics) -> None:
    loss_sum, n, grad_norm = (float(v) for v in jax.device_get(
        (metrics["loss"][0], metrics["loss"][1], metrics["grad_norm"][0])))
    loss = loss_sum / max(n, 1.0)
    if math.isfinite(loss) and math.isfinite(grad_norm):
      self.bad_in_row = 0
      return
    self.bad_in_row += 1
    what = f"values at step {step}: loss {loss:.4g}, gradient norm {grad_norm:.4g}"
    if self.bad_in_row > self.allowed:
      self._stop(f"non-finite {what}"
                           + (f" ({self.bad_in_row} such steps in a row)" if self.allowed else "")
                           + f": {self.hint()}")
    logging.warning("non-finite %s: update skipped (%d of %d allowed in a row)", what,
                    self.bad_in_row, self.allowed)

  def check_state(self, state, step: int) -> None:
    if not bool(_all_finite(state)):
      self._stop(f"the weights hold NaN or inf after step {step}: {self.hint()}")


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


def _restore(source, setup, step: int | None = None):
  """checkpoint.restore into this run's target. A run keeping an EMA that resumes a checkpoint
  without one (optimizer.ema_decay set on a resumed run) starts the EMA at the restored
  weights; a checkpoint with an EMA resumed without one is refused in one line."""
  target = setup.abstract_state
  try:
    state, meta = checkpoint.restore(source, target, step)
  except checkpoint.CheckpointDamaged:
    raise
  except ValueError as e:
    if "ema" in target and "ema" in str(e):
      pass  # the checkpoint has no EMA: restore the rest, then start one
    elif "ema" in str(e):
      raise cli.UsageError("the checkpoint keeps an EMA of the weights: resume it with "
                           "optimizer.ema_decay > 0") from None
    else:
      raise
  else:
    _require_finite(state, step)
    return state, meta
  state, meta = checkpoint.restore(source, {k: v for k, v in target.items() if k != "ema"}, step)
  _require_finite(state, step)
  copy = jax.jit(lambda *trees: dict(zip(("params", "batch_stats"), jax.tree.map(
      jnp.copy, trees))), out_shardings=setup.state_sharding["ema"])
  state["ema"] = copy(state["params"], state["batch_stats"])
  logging.info("the checkpoint has no EMA of the weights: starting it from the restored ones")
  return state, meta


def _require_finite(state, step) -> None:
  if not bool(_all_finite(state)):
    raise checkpoint.CheckpointDamaged(f"step {step} holds NaN or inf values")


def _restore_newest_good(manager, setup):
  """The newest step of this workdir that restores and checks out (files complete,
  checksums equal, values finite). Newer steps that failed are set aside — only once an older
  one restored, so a config that no longer fits any step (a changed model) moves nothing."""
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = _restore(manager, setup, step)
    except cli.UsageError:
      raise
    except Exception as e:  # noqa: BLE001 — Orbax/tensorstore/JSON: files missing or damaged
      failed.append((step, cli.one_line(e)[:200] or type(e).__name__))
      logging.warning("checkpoint step %d does not restore: %s", step, failed[-1][1])
      continue
    if failed:
      if jax.process_index() == 0:
        for bad, why in failed:
          where = checkpoint.set_aside(manager, bad)
          logging.warning("set checkpoint step %d aside as %s (%s); resuming from step %d",
                          bad, where, why, step)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gender_jax: damaged checkpoints set aside")
      manager.reload()
    return state, meta
  raise TrainingFailed(f"no checkpoint in {manager.directory} restores ("
                       + "; ".join(f"step {s}: {why}" for s, why in failed)
                       + "): if the config changed, rerun with the one the run started with; "
                       "else move that folder away to start over")


def _load_state(config, setup, manager, fingerprint: str, init_meta):
  """Init order:
  1. this workdir's latest checkpoint (the same run, restarted)
  2. config.resume_from: another run's checkpoint directory
  3. config.init_from: pretrained weights (a converted port or a bundle)
  4. scratch
  """
  if manager.latest_step() is not None:
    state, meta = _restore_newest_good(manager, setup)
    logging.info("resumed from %s at step %d", manager.directory, int(state["step"]))
    if meta.get("data_fingerprint") != fingerprint:
      logging.warning("data config changed since the checkpoint: the input stream differs")
  elif config.resume_from:
    state, _ = _restore(config.resume_from, setup)
    logging.info("resumed from %s at step %d", config.resume_from, int(state["step"]))
  elif config.init_from:
    init = lambda: create_model(config.model, rngs=nnx.Rngs(config.seed))  # noqa: E731
    fresh = _run_once(lambda: nnx.state(init()))
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(init)), fresh)  # the head keeps this init
    load_pretrained(model, config.init_from, head=None)
    state = jax.device_put(setup.init_state(model), setup.state_sharding)
    logging.info("initialised from %s (%s)", config.init_from, init_meta.get("source", "weights"))
  else:
    state = _run_once(setup.init_state, out_shardings=setup.state_sharding)
    logging.info("initialised from scratch")
  return state


# A program that runs once (the initialisation: a threefry draw per parameter) compiles in a
# fifth of the time without LLVM's optimisations, and runs in milliseconds either way
# (ResNet-18: 19.4 → 3.4 s on CPU, the same values).
_RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def _run_once(fn, **jit_kwargs):
  return jax.jit(fn, **jit_kwargs).lower().compile(compiler_options=_RUN_ONCE_OPTIONS)()


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
  state = _load_state(config, setup, manager, fingerprint, init_meta)
  start_step = int(state["step"])

  def before_stop():  # the last good checkpoint stays whole; the logs say how it went
    manager.wait_until_finished()
    writer.flush()
  guard = FiniteGuard(config, before_stop)

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

  drain()
  guard.check_state(state, step)
  manager.wait_until_finished()
  writer.flush()

  # ---- bundle
  _write_bundle(config, workdir, setup, state, spec, step, last_eval, inp.val_sources)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gender_jax: training done")
  return dict(preempted=False, step=step, **last_eval)
