"""Trainer validation: the train state's weights through the Predictor, per source, scored by
`evaluation.stats.point_metrics` (the figures evaluation reports, without intervals).

The Predictor is what `evaluate` runs on a bundle, so validation in the log and `evaluate`
on the same split and weights count the same images right. It is built once, at the first
validation, over the training mesh; later validations swap the weights in (no recompile).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flax import nnx

from gender_jax.evaluation import stats
from gender_jax.inference.bundle import Bundle
from gender_jax.inference.predictor import Predictor
from gender_jax.train.steps import inference_weights


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


class Validation:
  """Callable (state) → {"val_…": value}: the weights the bundle will hold (the EMA ones when
  kept) and, with an EMA, the live weights too as `val_live_*`."""

  def __init__(self, config, spec: dict[str, Any], mesh, val_sources: dict, eval_graphdef,
               threads: int = 4):
    self.config, self.spec, self.mesh, self.val_sources = config, spec, mesh, val_sources
    self.eval_graphdef, self.threads = eval_graphdef, threads
    self.predictor: Predictor | None = None
    self._warned: set[str] = set()

  def _load(self, params, batch_stats) -> Predictor:
    model = nnx.merge(self.eval_graphdef, params, batch_stats)
    if self.predictor is None:
      bundle = Bundle.from_model(model, model_config=self.config.model.to_dict(),
                                 preprocessing=self.spec)
      self.predictor = Predictor(bundle, batch_size=self.config.data.eval_batch_size,
                                 mesh=self.mesh, threads=self.threads)
    else:
      self.predictor.set_model(model)
    return self.predictor

  def __call__(self, state) -> dict[str, float]:
    weights = {"": inference_weights(state)}
    if "ema" in state:
      weights["live"] = (state["params"], state["batch_stats"])
    results = {}
    for kind, (params, batch_stats) in weights.items():
      predictor = self._load(params, batch_stats)
      per_source = {}
      for name, source in self.val_sources.items():
        out = predictor.logits_for_records(source)
        self._warn(name, out.errors)
        per_source[name] = stats.point_metrics(out.values, out.labels)
      prefix = f"val_{kind}_" if kind else "val_"
      results.update({prefix + k[len("val_"):]: v
                      for k, v in validation_results(per_source).items()})
    return results

  def _warn(self, name: str, errors) -> None:
    """Unreadable validation images are counted out of the metrics, said once per source."""
    if errors and name not in self._warned:
      self._warned.add(name)
      key, reason = errors[0]
      logging.warning("validation %s: %d image(s) could not be decoded and are left out "
                      "(first: %s: %s)", name, len(errors), key, reason)
