"""Step arithmetic and validation for ml_collections training configs."""
from __future__ import annotations

import difflib

import ml_collections
from gender_jax.models import ARCHS, MIN_IMAGE_SIZE

FINETUNE_MODES = ("scratch", "all", "head", "last_n")
BN_MODES = ("train", "frozen")
OPTIMIZERS = ("sgd", "adamw")


def get_steps(name: str, config: ml_collections.ConfigDict, num_train_examples: int,
              batch_size: int, default: int | None = None) -> int | None:
  """Turns `{name}_steps`, `{name}_epochs` or `{name}_examples` into steps; at most one may be set."""
  given = {suffix: config.get(f"{name}_{suffix}") for suffix in ("steps", "epochs", "examples")}
  # 0 counts as unset, so `--config.total_epochs=0 --config.total_steps=20` switches units
  # from the command line (the flag parser cannot set None).
  given = {k: v for k, v in given.items() if v}
  if len(given) > 1:
    raise ValueError(f"set only one of {', '.join(f'{name}_{k}' for k in given)}")
  if not given:
    return default
  (suffix, value), = given.items()
  if suffix == "steps":
    return int(value)
  examples = value * num_train_examples if suffix == "epochs" else value
  return max(1, int(round(examples / batch_size)))


# The steps after training a config may list (train/after.py runs them).
AFTER_TRAINING = ("precise_bn", "face_template", "calibrate")


def after_training(config) -> list[str]:
  """`config.after_training` ("precise_bn,calibrate") as a list of names."""
  return [n.strip() for n in str(config.get("after_training", "")).split(",") if n.strip()]


def _lengths(config):
  """(name, its key prefix, the config node holding it) of each length counted in steps,
  epochs or examples."""
  return (("total", "", config), ("eval_every", "", config),
          ("checkpoint_every", "checkpoint.", config.checkpoint),
          ("warmup", "optimizer.", config.optimizer))


def _value_errors(config) -> list[str]:
  """Counts and rates that must be positive (or not negative), and at least one run length."""
  errors = []
  positive = {"data.batch_size": config.data.batch_size,
              "data.eval_batch_size": config.data.eval_batch_size,
              "data.image_size": config.data.image_size, "log_every": config.log_every,
              "optimizer.lr": config.optimizer.lr, "checkpoint.keep": config.checkpoint.keep}
  for key, value in positive.items():
    if value is not None and value <= 0:
      errors.append(f"{key}={value} must be positive")
  not_negative = {"optimizer.weight_decay": config.optimizer.weight_decay,
                  "optimizer.end_lr_fraction": config.optimizer.get("end_lr_fraction", 0.0)}
  for name, prefix, node in _lengths(config):
    for unit in ("steps", "epochs", "examples"):
      not_negative[f"{prefix}{name}_{unit}"] = node.get(f"{name}_{unit}")
  for key, value in not_negative.items():
    if value is not None and value < 0:
      errors.append(f"{key}={value} must not be negative")
  if not any((config.get(f"total_{u}") or 0) > 0 for u in ("steps", "epochs", "examples")):
    errors.append("the run has no length: set a positive total_steps, total_epochs or "
                  "total_examples (e.g. --config.total_steps=200)")
  if not 0 <= config.get("label_smoothing", 0.0) < 1:
    errors.append(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
  return errors


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the key named, on settings the trainer would only trip over later."""
  errors = []
  unknown = [n for n in after_training(config) if n not in AFTER_TRAINING]
  if unknown:
    errors.append(f"after_training: no step {', '.join(map(repr, unknown))}; the steps are "
                  f"{', '.join(AFTER_TRAINING)} (comma-separated, run in the order given)")
  if config.finetune.mode not in FINETUNE_MODES:
    errors.append(f"finetune.mode={config.finetune.mode!r}: choose from {FINETUNE_MODES}")
  if config.finetune.mode == "last_n" and config.finetune.last_n < 1:
    errors.append("finetune.last_n must be ≥ 1 when finetune.mode='last_n'")
  if config.finetune.mode == "scratch" and config.init_from:
    errors.append("finetune.mode='scratch' with init_from set: pick one")
  bn = config.model.get("bn", "train")
  if bn not in BN_MODES:
    errors.append(f"model.bn={bn!r}: choose 'train' (batch statistics) or 'frozen' (the "
                  "loaded statistics, never updated)")
  elif bn == "frozen" and config.finetune.mode == "scratch":
    errors.append("model.bn='frozen' keeps the loaded statistics, and finetune.mode='scratch' "
                  "loads none: set init_from and finetune.mode, or model.bn='train'")
  ema_decay = config.optimizer.get("ema_decay", 0.0)
  if not 0.0 <= ema_decay < 1.0:
    errors.append(f"optimizer.ema_decay={ema_decay}: use 0 (off) or a decay in (0, 1), "
                  "e.g. 0.999")
  if config.get("mixup_alpha", 0.0) < 0:
    errors.append(f"mixup_alpha={config.mixup_alpha}: use 0 (off) or a Beta(α, α) parameter "
                  "> 0, e.g. 0.2")
  if config.optimizer.name not in OPTIMIZERS:
    errors.append(f"optimizer.name={config.optimizer.name!r}: choose from {OPTIMIZERS}")
  if config.model.compute_dtype == "float16":
    # float16 gradients underflow without loss scaling, which the trainer does not do.
    errors.append("model.compute_dtype='float16' needs loss scaling, which the trainer does "
                  "not do: use 'bfloat16' (same speed on GPUs/TPUs, float32's range) or "
                  "'float32'")
  elif config.model.compute_dtype not in ("float32", "bfloat16"):
    errors.append(f"model.compute_dtype={config.model.compute_dtype!r}: choose 'float32' or "
                  "'bfloat16'")
  errors += _value_errors(config)
  for name, prefix, node in _lengths(config):
    given = [f"{name}_{k}" for k in ("steps", "epochs", "examples") if node.get(f"{name}_{k}")]
    if len(given) > 1:  # a config counts in one unit; the command line may switch it
      errors.append(f"{' and '.join(given)} are both set: keep one (e.g. add "
                    f"--config.{prefix}{given[1]}=0)")
  if config.model.arch not in ARCHS:
    near = difflib.get_close_matches(config.model.arch, ARCHS, n=3)
    errors.append(f"model.arch={config.model.arch!r} is not a model here: "
                  + (f"did you mean {' or '.join(near)}? " if near else "")
                  + f"choose from {', '.join(ARCHS)}")
  smallest = MIN_IMAGE_SIZE.get(config.model.arch, 1)
  if config.data.image_size < smallest:
    errors.append(f"data.image_size={config.data.image_size} is too small for "
                  f"{config.model.arch}: use ≥ {smallest}")
  if errors:
    raise ValueError("invalid config: " + "; ".join(errors))
