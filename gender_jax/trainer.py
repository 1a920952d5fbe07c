"""train_and_evaluate(config, workdir): the training loop, in labelled sections.

Order: logging → mesh → input → model, optimizer, state and steps (`create_train_setup`) →
load checkpoint → evals → loop → bundle.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from gender_jax import checkpoint, config as config_lib, metrics as metrics_lib, parallel
from gender_jax.data import pipeline, preprocess, sources
from gender_jax.models import create_model, ports

# Steps dispatched ahead of the host before it waits. Unbounded async dispatch deadlocks
# XLA:CPU collectives on many fake devices (DESIGN.md); 2 also keeps a GPU busy.
MAX_STEPS_IN_FLIGHT = 2


# ----------------------------------------------------------------------------- fine-tuning
def _path_names(path) -> tuple:
  names = tuple(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))) for p in path)
  return names[:-1] if names and names[-1] == "value" else names


def trainable_stages(model, finetune: ml_collections.ConfigDict) -> set[str]:
  """Stages whose parameters train: all, the head only, or the head plus the last N stages."""
  stages = model.stages
  if finetune.mode in ("scratch", "all"):
    return set(stages)
  if finetune.mode == "head":
    return {stages[-1]}
  return set(stages[-(finetune.last_n + 1):])


def param_labels(model, params, config) -> Any:
  """Optimizer group per parameter: "frozen", or "lr_x<multiplier>" from optimizer.lr_mult."""
  trainable = trainable_stages(model, config.finetune)
  lr_mult = dict(config.optimizer.lr_mult)

  def label(path, _):
    stage = model.stage_of(_path_names(path))
    return f"lr_x{float(lr_mult.get(stage, 1.0))}" if stage in trainable else "frozen"
  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config, labels, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
  opt = config.optimizer
  warmup = config_lib.get_steps("warmup", opt, 1, 1, default=0)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, opt.lr, warmup_steps=min(warmup, total_steps - 1),
      decay_steps=max(total_steps, 1), end_value=opt.lr * opt.end_lr_fraction)

  def base(mult: float):
    lr = lambda step: schedule(step) * mult  # noqa: E731
    # Decay conv/dense kernels only, not BN scales or biases.
    decay = optax.add_decayed_weights(opt.weight_decay, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p))
    if opt.name == "sgd":
      return optax.chain(decay, optax.sgd(lr, momentum=opt.momentum, nesterov=opt.nesterov))
    return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                       mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

  groups = set(jax.tree.leaves(labels))
  transforms = {g: optax.set_to_zero() if g == "frozen" else base(float(g[len("lr_x"):]))
                for g in groups}
  tx = optax.multi_transform(transforms, labels)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


# ----------------------------------------------------------------------------- steps
def make_train_step(train_graphdef, tx, spec, config, frozen_stats, frozen_params=None):
  """`frozen_params`: a tree of bools like the params; frozen ones are held out of the
  gradient (zero there, so clipping and grad_norm see trainable parameters only, and XLA
  drops the backward pass that only fed them)."""
  compute_dtype = jnp.dtype(config.model.compute_dtype)
  smoothing = config.label_smoothing
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_key, state["step"])
    labels = batch["label"]

    def loss_fn(params):
      if frozen_params is not None:
        params = jax.tree.map(lambda frozen, p: jax.lax.stop_gradient(p) if frozen else p,
                              frozen_params, params)
      model = nnx.merge(train_graphdef, params, state["batch_stats"], copy=True)
      logits = model(preprocess.normalize(batch["image"], spec, compute_dtype),
                     rngs=nnx.Rngs(dropout=rng))
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Frozen stages keep their running statistics too, so a frozen backbone stays the
    # network it was loaded as.
    batch_stats = jax.tree.map(lambda frozen, old, new: old if frozen else new,
                               frozen_stats, state["batch_stats"], batch_stats)
    n = jnp.float32(labels.shape[0])
    metrics = {"loss": (loss * n, n),
               "accuracy": (jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32), n),
               "grad_norm": (optax.global_norm(grads), jnp.float32(1))}
    new_state = dict(step=state["step"] + 1, params=params, batch_stats=batch_stats,
                     opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(eval_graphdef, spec, config):
  compute_dtype = jnp.dtype(config.model.compute_dtype)

  def eval_step(params, batch_stats, batch):
    model = nnx.merge(eval_graphdef, params, batch_stats)
    logits = model(preprocess.normalize(batch["image"], spec, compute_dtype))
    labels, mask = batch["label"], batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
    out = {"loss": (jnp.sum(loss * mask), jnp.sum(mask)), "accuracy": (jnp.sum(correct), jnp.sum(mask))}
    for c, name in enumerate(("female", "male")):
      in_class = mask * (labels == c)
      out[f"recall_{name}"] = (jnp.sum(correct * in_class), jnp.sum(in_class))
    return out

  return eval_step


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


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Model, optimizer, state shapes and the jitted steps, built once: the loop uses it and
  benchmarks/train_step.py times exactly this `train_step`."""
  train_step: Callable   # jitted (state, batch) → (state, metric sums); state donated
  eval_step: Callable    # jitted (params, batch_stats, batch) → metric sums
  init_state: Callable   # (model=None) → a fresh state (unsharded outside jit)
  abstract_state: Any    # shapes with shardings: the Orbax restore target
  state_sharding: Any
  schedule: Callable
  eval_graphdef: Any


def create_train_setup(config, mesh, total_steps: int, spec: dict) -> TrainSetup:
  def init_model():
    return create_model(config.model, rngs=nnx.Rngs(config.seed))

  # Shapes first: nothing is allocated until the state is created, already sharded.
  abstract_model = nnx.eval_shape(init_model)
  _, abstract_params, abstract_stats = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
  labels = param_labels(abstract_model, abstract_params, config)
  tx, schedule = create_optimizer(config, labels, total_steps)
  trainable = trainable_stages(abstract_model, config.finetune)
  frozen_stats = jax.tree_util.tree_map_with_path(
      lambda path, _: abstract_model.stage_of(_path_names(path)) not in trainable, abstract_stats)
  frozen_params = jax.tree.map(lambda label: label == "frozen", labels)
  abstract_model.train()
  train_graphdef = nnx.graphdef(abstract_model)
  abstract_model.eval()
  eval_graphdef = nnx.graphdef(abstract_model)

  replicated = parallel.replicated(mesh)

  def init_state(model=None):
    model = model or init_model()
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return dict(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                opt_state=tx.init(params))

  abstract_state = jax.eval_shape(init_state)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
      state_sharding)
  train_step = jax.jit(make_train_step(train_graphdef, tx, spec, config, frozen_stats,
                                       frozen_params),
                       in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(eval_graphdef, spec, config), out_shardings=replicated)
  return TrainSetup(train_step, eval_step, init_state, abstract_state, state_sharding,
                    schedule, eval_graphdef)


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


def validation_results(per_source: dict[str, dict[str, float]]) -> dict[str, float]:
  """{source: {metric: value}} → `val_<metric>` for one source; for several,
  `val_<source>_<metric>` plus the mixture's headline `val_<metric>`: the mean over sources
  of that same metric (matched by name, so `accuracy` never takes in `balanced_accuracy`)."""
  if len(per_source) == 1:
    (summary,) = per_source.values()
    return {f"val_{k}": v for k, v in summary.items()}
  results = {f"val_{name}_{k}": v for name, summary in per_source.items()
             for k, v in summary.items()}
  for k in ("accuracy", "balanced_accuracy", "loss"):
    values = [summary[k] for summary in per_source.values() if k in summary]
    if values:
      results[f"val_{k}"] = float(np.mean(values))
  return results


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates, checkpoints and writes the inference bundle; returns final metrics."""
  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

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
  num_train = sum(len(sources.get_source(n, "train", config))
                  for n in sources.configured_sources(config))
  total_steps = config_lib.get_steps("total", config, num_train, config.data.batch_size)
  if not total_steps:
    raise ValueError("set one of total_steps, total_epochs, total_examples")
  eval_every = config_lib.get_steps("eval_every", config, num_train, config.data.batch_size,
                                    default=total_steps)
  ckpt_every = config_lib.get_steps("checkpoint_every", config.checkpoint, num_train,
                                    config.data.batch_size, default=eval_every)
  val_sources = {n: sources.get_source(n, "validation", config)
                 for n in sources.configured_sources(config)}
  if jax.process_index() == 0:
    sources.write_bad_file_report(config, workdir)  # WORKDIR/bad_files.json
    sources.write_split_listing(config, workdir)    # WORKDIR/splits.csv

  # ---- model & optimizer
  spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
  init_meta = None
  if config.init_from:
    init_meta = checkpoint.read_meta(config.init_from)
    if "preprocessing" in init_meta:  # the ported weights expect their own input scaling
      spec = preprocess.make_spec(config.data.image_size, init_meta["preprocessing"]["preset"])
    if init_meta.get("variant") and init_meta["variant"] != config.model.get("variant"):
      with config.unlocked():
        config.model.variant = init_meta["variant"]

  setup = create_train_setup(config, mesh, total_steps, spec)
  train_step, eval_step, schedule = setup.train_step, setup.eval_step, setup.schedule
  abstract_state, state_sharding = setup.abstract_state, setup.state_sharding

  # ---- load checkpoint. Init order:
  # 1. this workdir's latest checkpoint (the same run, restarted)
  # 2. config.resume_from: another run's checkpoint directory
  # 3. config.init_from: pretrained weights (a converted port or a bundle)
  # 4. scratch
  manager = checkpoint.create_manager(os.path.join(workdir, "checkpoints"),
                                      keep=config.checkpoint.keep,
                                      best_metric=config.checkpoint.best_metric or None,
                                      async_save=config.checkpoint.async_save)
  fingerprint = _fingerprint(config)
  if manager.latest_step() is not None:
    state, meta = checkpoint.restore(manager, abstract_state)
    logging.info("resumed from %s at step %d", manager.directory, int(state["step"]))
    if meta.get("data_fingerprint") != fingerprint:
      logging.warning("data config changed since the checkpoint: the input stream differs")
  elif config.resume_from:
    state, _ = checkpoint.restore(config.resume_from, abstract_state)
    logging.info("resumed from %s at step %d", config.resume_from, int(state["step"]))
  elif config.init_from:
    model = create_model(config.model, rngs=nnx.Rngs(config.seed))
    ports.load_pretrained(model, config.init_from, head=None)
    state = jax.device_put(setup.init_state(model), state_sharding)
    logging.info("initialised from %s (%s)", config.init_from, init_meta.get("source", "weights"))
  else:
    state = jax.jit(setup.init_state, out_shardings=state_sharding)()
    logging.info("initialised from scratch")
  start_step = int(state["step"])

  # ---- evals
  def evaluate(state) -> dict[str, float]:
    per_source = {}
    for name, source in val_sources.items():
      sums = None
      for batch in pipeline.eval_batches(source, config):
        sums = metrics_lib.accumulate(
            sums, eval_step(state["params"], state["batch_stats"], parallel.put_batch(batch, mesh)))
      per_source[name] = metrics_lib.summarize(sums)
    return validation_results(per_source)

  def save(step, metrics=None, force=False):
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
               start_step, total_steps, config.data.batch_size, mesh.size, num_train)
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
    in_flight.append(step_metrics["loss"][0])
    pending.append(step_metrics)
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
      in_flight.popleft().block_until_ready()

    if step % config.log_every == 0 or step == total_steps:
      summary = metrics_lib.summarize(functools.reduce(metrics_lib.accumulate, pending))
      pending = []
      # Throughput over this log window only, so the first window's compile doesn't skew it.
      now = time.perf_counter()
      rate = (step - step0) * config.data.batch_size / (now - t0)
      t0, step0 = now, step
      summary.update(lr=float(schedule(step - 1)), img_per_sec=rate)  # the lr this step used
      writer.write_scalars(step, {f"train_{k}" if k not in ("lr", "img_per_sec") else k: v
                                  for k, v in summary.items()})
      if jax.process_index() == 0:
        eta = (total_steps - step) * config.data.batch_size / max(rate, 1e-9)
        logging.info("step %d/%d  loss %.4f  acc %.3f  lr %.2e  %.0f img/s  ETA %s",
                     step, total_steps, summary["loss"], summary["accuracy"], summary["lr"],
                     rate, _format_eta(eta))

    is_eval = step % eval_every == 0 or step == total_steps
    if is_eval:
      last_eval = evaluate(state)
      writer.write_scalars(step, last_eval)
      logging.info("eval at step %d: %s", step,
                   "  ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())))
    if is_eval or step % ckpt_every == 0:
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

  manager.wait_until_finished()
  writer.flush()

  # ---- bundle
  model = nnx.merge(setup.eval_graphdef, jax.device_get(state["params"]),
                    jax.device_get(state["batch_stats"]))
  checkpoint.save_bundle(
      os.path.join(workdir, "bundle"), model, model_config=config.model.to_dict(),
      preprocessing=spec, extra=dict(step=int(step), metrics=last_eval))
  logging.info("wrote inference bundle to %s", os.path.join(workdir, "bundle"))
  if config.calibrate:
    # Temperature (and the abstain threshold, if targeted) fitted on the validation splits.
    # Every process fits (same data, same result; process 0 writes), so all reach the
    # shutdown barrier together.
    from gender_jax import calibrate, eval_data
    fit = calibrate.calibrate_bundle(
        os.path.join(workdir, "bundle"), eval_data.Concat(list(val_sources.values())),
        target_accuracy=config.abstain_target_accuracy or None,
        batch_size=config.data.eval_batch_size, description="validation")
    logging.info("calibration: %s", {k: v for k, v in fit.items() if not isinstance(v, dict)})
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gender_jax: training done")
  return dict(preempted=False, step=step, **last_eval)

