"""Finite or nothing: a run whose loss, gradient norm or weights turn NaN or inf stops with one
line and no bundle (or skips up to `config.max_nonfinite_steps` bad updates in a row)."""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp


class TrainingFailed(RuntimeError):
  """The run cannot go on (a non-finite loss, gradient or weights; no checkpoint restores):
  no bundle is written and the command exits 1 with this one line."""


@jax.jit
def all_finite(tree) -> jax.Array:
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
    if not bool(all_finite(state)):
      self._stop(f"the weights hold NaN or inf after step {step}: {self.hint()}")
