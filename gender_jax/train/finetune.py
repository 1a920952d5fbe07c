"""Fine-tuning modes as data: which stages train, optimizer groups, and the train-mode graph.

A frozen stage is the network it was loaded as: its parameters get no gradient and no
update, its BatchNorm layers normalise with their running statistics (never the batch's) and
its dropout is off, so its output in the train step equals its output at inference.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx
from gender_jax.cli import UsageError


def path_names(path) -> tuple:
  """A state/tree path as plain names: ('layer1', 0, 'bn1', 'scale')."""
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
  unknown = sorted(set(lr_mult) - set(model.stages))
  if unknown:  # a typo would otherwise train that stage at the base rate, silently
    raise UsageError(f"optimizer.lr_mult names {', '.join(map(repr, unknown))}, not a stage of "
                     f"{config.model.arch}; its stages: {', '.join(model.stages)}")

  def label(path, _):
    stage = model.stage_of(path_names(path))
    return f"lr_x{float(lr_mult.get(stage, 1.0))}" if stage in trainable else "frozen"
  return jax.tree_util.tree_map_with_path(label, params)


def frozen_stats_mask(model, batch_stats, config) -> Any:
  """True for each BatchNorm statistic the train step must leave as loaded: those of frozen
  stages, and all of them under model.bn='frozen'."""
  if config.model.get("bn", "train") == "frozen":
    return jax.tree.map(lambda _: True, batch_stats)
  trainable = trainable_stages(model, config.finetune)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: model.stage_of(path_names(path)) not in trainable, batch_stats)


def set_train_mode(model, config) -> None:
  """Puts `model` in train mode except where frozen: BatchNorm of frozen stages (or every
  BatchNorm under model.bn='frozen') on running averages, dropout of frozen stages off.

  Done on the abstract model before its graphdef is taken: the modes are static attributes,
  so the train step's graph never computes batch statistics for those layers (nor, on a
  mesh, all-reduces them); their parameters are held out of the gradient in the step.
  """
  model.train()
  trainable = trainable_stages(model, config.finetune)
  bn_frozen = config.model.get("bn", "train") == "frozen"
  # A dropout outside every stage is the model's shared one, applied to the features fed to
  # the head (VGG: also between fc1 and fc2): it belongs to the last stage before the head,
  # so a linear probe (head mode) trains on exactly the frozen features inference sees.
  stages = model.stages
  feature_stage = stages[-2] if len(stages) > 1 else stages[-1]
  for path, module in nnx.iter_modules(model):
    if not isinstance(module, (nnx.BatchNorm, nnx.Dropout)):
      continue
    stage = model.stage_of(tuple(path))
    if isinstance(module, nnx.BatchNorm):
      module.use_running_average = bn_frozen or stage not in trainable
    else:
      module.deterministic = (stage if stage in stages else feature_stage) not in trainable
