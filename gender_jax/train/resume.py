"""Where a run's state comes from: this workdir's newest checkpoint that restores and checks
out (damaged newer steps set aside), another run's checkpoint, pretrained weights, or scratch."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import multihost_utils

from gender_jax import cli
from gender_jax.models import create_model
from gender_jax.models.weights import load_pretrained
from gender_jax.train import checkpoint, finite


def restore(source, setup, step: int | None = None):
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
  if not bool(finite.all_finite(state)):
    raise checkpoint.CheckpointDamaged(f"step {step} holds NaN or inf values")


def restore_newest_good(manager, setup):
  """The newest step of this workdir that restores and checks out (files complete,
  checksums equal, values finite). Newer steps that failed are set aside — only once an older
  one restored, so a config that no longer fits any step (a changed model) moves nothing."""
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = restore(manager, setup, step)
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
  raise finite.TrainingFailed(f"no checkpoint in {manager.directory} restores ("
                       + "; ".join(f"step {s}: {why}" for s, why in failed)
                       + "): if the config changed, rerun with the one the run started with; "
                       "else move that folder away to start over")


def load_state(config, setup, manager, fingerprint: str, init_meta):
  """Init order:
  1. this workdir's latest checkpoint (the same run, restarted)
  2. config.resume_from: another run's checkpoint directory
  3. config.init_from: pretrained weights (a converted port or a bundle)
  4. scratch
  """
  if manager.latest_step() is not None:
    state, meta = restore_newest_good(manager, setup)
    logging.info("resumed from %s at step %d", manager.directory, int(state["step"]))
    if meta.get("data_fingerprint") != fingerprint:
      logging.warning("data config changed since the checkpoint: the input stream differs")
  elif config.resume_from:
    state, _ = restore(config.resume_from, setup)
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
