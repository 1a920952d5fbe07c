"""Precise BatchNorm: the running statistics recomputed on training data after training.

During training each BatchNorm keeps an exponential moving average of its batch statistics.
With a slow average (torchvision's MobileNets: PyTorch momentum 0.01, flax momentum 0.99) and
a short run, those averages still sit near their initial values (mean 0, var 1) when training
ends, and the eval-mode model answers one class. Precise BN (pycls, Detectron) replaces them
after training: the model runs in train mode over K training batches, and each BatchNorm's
running mean and variance become the average over those batches of the batch mean and
(biased) batch variance — what a cumulative average (momentum_i = i / (i + 1)) would reach.

  model = recalibrate(model, batches)                   # in place; also returned
  recalibrate_bundle("runs/x/bundle", images)           # a bundle's weights, re-saved

Only the statistics change: parameters, dropout (off while measuring) and every layer's mode
and momentum are as before. A model without BatchNorm is returned untouched. One jitted
program per input shape computes a batch's statistics and adds them to the running sum.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from flax import nnx
from gender_jax.data.preprocess import normalize
from gender_jax.inference.bundle import Bundle, save_bundle as save

# The attributes nnx's train()/eval() switch, saved and restored around the measurement.
_MODE_ATTRS = ("deterministic", "use_running_average")


def batch_norms(model: nnx.Module) -> list[nnx.BatchNorm]:
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def recalibrate(model: nnx.Module, batches: Iterable[Any], *,
                prepare: Callable[[jax.Array], jax.Array] | None = None,
                max_batches: int | None = None) -> nnx.Module:
  """Sets every BatchNorm's running mean/var to the mean over `batches` of its batch stats.

  `batches`: model inputs (arrays, or dicts with an "image" entry); `prepare` maps one to the
  model's input inside the jitted program (e.g. uint8 → normalised floats). At most
  `max_batches` are read. Each batch's statistics weigh the same (use equal batch sizes).
  Returns `model`, updated in place.
  """
  norms = batch_norms(model)
  if not norms:
    return model
  modes = [(m, {a: getattr(m, a) for a in _MODE_ATTRS if hasattr(m, a)})
           for _, m in nnx.iter_modules(model)]
  momenta = [m.momentum for m in norms]
  try:
    model.eval()  # dropout off; then batch statistics in every BatchNorm
    for m in norms:
      m.use_running_average = False
      m.momentum = 0.0  # the running value after a call is exactly that batch's statistic
    graphdef, stats, rest = nnx.split(model, nnx.BatchStat, ...)
    prep = prepare or (lambda x: x)

    @jax.jit
    def accumulate(total, stats, rest, x):
      m = nnx.merge(graphdef, stats, rest)
      m(prep(x))
      new = nnx.state(m, nnx.BatchStat)
      return jax.tree.map(lambda t, s: t + s.astype(jnp.float32), total, new)

    total = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), stats)
    count = 0
    for batch in itertools.islice(batches, max_batches):
      x = batch["image"] if isinstance(batch, dict) else batch
      total = accumulate(total, stats, rest, x)
      count += 1
    if not count:
      raise ValueError("precise BN: no batches to measure the statistics on")
    mean = jax.tree.map(lambda t, s: (t / count).astype(s.dtype), total, stats)
    nnx.update(model, mean)
  finally:
    for m, momentum in zip(norms, momenta):
      m.momentum = momentum
    for m, attrs in modes:
      for a, v in attrs.items():
        setattr(m, a, v)
  return model


# ----------------------------------------------------------------------------- bundles
def recalibrate_bundle(directory: str, images: Iterable[Any], *, out: str | None = None,
                       max_batches: int | None = None) -> dict[str, Any]:
  """Precise BN on a bundle: uint8 NHWC training batches, normalised as the bundle's
  preprocessing says, then the bundle re-saved (to `out`, default in place) with the new
  statistics and `precise_bn` = {batches, examples} in its meta. Returns that entry; a bundle
  whose model has no BatchNorm is left as it is ({"batches": 0}).
  """
  bundle = Bundle(directory)
  if not batch_norms(bundle.model):
    return dict(batches=0, examples=0)
  spec, dtype = bundle.preprocessing, bundle.model_config.compute_dtype
  seen = dict(batches=0, examples=0)

  def counted():
    for batch in images:
      x = batch["image"] if isinstance(batch, dict) else batch
      seen["batches"] += 1
      seen["examples"] += int(x.shape[0])
      yield x
  recalibrate(bundle.model, counted(), prepare=lambda x: normalize(x, spec, dtype),
              max_batches=max_batches)
  bundle.model.eval()
  meta = bundle.meta
  known = ("format_version", "model", "preprocessing", "class_names", "calibration")
  extra = {k: v for k, v in meta.items() if k not in known}
  extra["precise_bn"] = dict(seen)
  save(out or directory, bundle.model, model_config=meta["model"],
       preprocessing=meta["preprocessing"], calibration=meta.get("calibration"), extra=extra)
  return dict(seen)
