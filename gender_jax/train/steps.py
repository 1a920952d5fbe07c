"""The optimizer, the pure train/eval steps, and `create_train_setup`, which jits them over
the mesh once: the loop in trainer.py and benchmarks/train_step.py use exactly these."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gender_jax import parallel
from gender_jax.train import schedule as config_lib
from gender_jax.train import mixup
from gender_jax.train import finetune
from gender_jax.data import device_augment, preprocess
from gender_jax.models import create_model


# ----------------------------------------------------------------------------- optimizer
def create_optimizer(config, labels, total_steps: int,
                     num_train: int = 0) -> tuple[optax.GradientTransformation, Any]:
  """`num_train` (training examples) turns optimizer.warmup_epochs into steps."""
  opt = config.optimizer
  warmup = config_lib.get_steps("warmup", opt, num_train, config.data.batch_size, default=0)
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
    # Frozen gradients are exact zeros here (stop_gradient), and adding 0.0 to a sum of
    # squares is exact, so this norm equals the trainable parameters' own bit for bit
    # (tests/test_finetune.py checks it); the clip needs no mask.
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, schedule


# ----------------------------------------------------------------------------- EMA
def ema_decay_at(config, step):
  """The EMA decay for the update after `step` updates; with optimizer.ema_warmup, the
  `min(decay, (1 + step) / (10 + step))` ramp (tf.train.ExponentialMovingAverage's
  num_updates, timm's warmup), so early averages are not dominated by the initial weights."""
  decay = jnp.float32(config.optimizer.ema_decay)
  if config.optimizer.get("ema_warmup", False):
    step = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return decay


def ema_update(ema, live, keep, decay):
  """decay·ema + (1 − decay)·live per leaf; leaves where `keep` is True (frozen parameters
  and statistics) take the live value, which never changes, so they stay bit-identical."""
  return jax.tree.map(lambda k, e, x: x if k else optax.incremental_update(x, e, 1.0 - decay),
                      keep, ema, live)


# ----------------------------------------------------------------------------- steps
def make_train_step(train_graphdef, tx, spec, config, frozen_stats, frozen_params=None):
  """The pure step (state, batch) → (state, metric sums).

  `frozen_params` / `frozen_stats`: trees of bools like the params / batch stats. Frozen
  parameters are held out of the gradient (stop_gradient), so no backward pass runs through
  the stages below the first trainable one (head mode: XLA's FLOPs for the step equal the
  forward pass's). Their BN runs on running averages (finetune.set_train_mode), which also
  drops the batch-statistic reductions and their all-reduces over the mesh (ResNet-50 head
  step on 8 devices: 51 all-reduces → 2). `grad_norm` is over the trainable gradients only.
  """
  compute_dtype = jnp.dtype(config.model.compute_dtype)
  smoothing = config.label_smoothing
  mixup_alpha = float(config.get("mixup_alpha", 0.0))
  base_key = jax.random.key(config.seed)
  use_ema = bool(config.optimizer.get("ema_decay", 0.0))
  skip_nonfinite = int(config.get("max_nonfinite_steps", 0)) > 0
  on_device = bool(config.data.get("device_augment", False))
  if on_device:  # flip, colour jitter, grayscale here; the host only decodes, crops, resizes
    aug_key, aug_params = device_augment.base_key(config.seed), device_augment.params_for(config)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_key, state["step"])
    labels = batch["label"]
    frozen = (jax.tree.map(lambda _: False, state["params"]) if frozen_params is None
              else frozen_params)
    # The step's one image path: uint8 NHWC in, the model's input out; each example's
    # augmentation is keyed by (seed, step, its index in the global batch).
    images = batch["image"]
    if on_device:
      images = device_augment.augment_batch(batch, aug_key, state["step"], aug_params)
    inputs = preprocess.normalize(images, spec, compute_dtype)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, config.model.num_classes), smoothing)
    if mixup_alpha > 0:  # accuracy below stays against each example's own label
      inputs, targets, _ = mixup.mix(inputs, targets, mixup.step_key(config.seed, state["step"]),
                                     mixup_alpha)

    def loss_fn(params):
      params = jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen, params)
      model = nnx.merge(train_graphdef, params, state["batch_stats"], copy=True)
      logits = model(inputs, rngs=nnx.Rngs(dropout=rng))
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Frozen statistics are never recomputed (running averages in the graph); taking the old
    # leaves also keeps them bit-identical, whatever a model does with them.
    batch_stats = jax.tree.map(lambda f, old, new: old if f else new,
                               frozen_stats, state["batch_stats"], batch_stats)
    n = jnp.float32(labels.shape[0])
    trainable_grads = [g for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen))
                       if not f]
    metrics = {"loss": (loss * n, n),
               "accuracy": (jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32), n),
               "grad_norm": (optax.global_norm(trainable_grads), jnp.float32(1))}
    new_state = dict(step=state["step"] + 1, params=params, batch_stats=batch_stats,
                     opt_state=opt_state)
    if use_ema:
      # The statistics are averaged with the weights: the EMA weights' activations are not the
      # live weights', and statistics averaged over the same horizon match them better than
      # the live ones (the choice of EfficientNet's TF EMA and timm's ModelEmaV2). Frozen
      # leaves are copied, so they stay exact.
      decay = ema_decay_at(config, state["step"])
      new_state["ema"] = dict(
          params=ema_update(state["ema"]["params"], params, frozen, decay),
          batch_stats=ema_update(state["ema"]["batch_stats"], batch_stats, frozen_stats, decay))
    if skip_nonfinite:
      # A NaN/inf step leaves the state as it was (the loop counts such steps and stops the
      # run after config.max_nonfinite_steps of them in a row); only the step advances.
      ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"][0])
      kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                          {k: v for k, v in new_state.items() if k != "step"},
                          {k: v for k, v in state.items() if k != "step"})
      new_state = dict(kept, step=new_state["step"])
    return new_state, metrics

  return train_step


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Model, optimizer, state shapes and the jitted steps, built once: the loop uses it and
  benchmarks/train_step.py times exactly this `train_step`."""
  train_step: Callable   # jitted (state, batch) → (state, metric sums); state donated
  init_state: Callable   # (model=None) → a fresh state (unsharded outside jit)
  abstract_state: Any    # shapes with shardings: the Orbax restore target
  state_sharding: Any
  schedule: Callable
  eval_graphdef: Any
  train_graphdef: Any = None


def inference_weights(state) -> tuple[Any, Any]:
  """(params, batch_stats) that validation and the bundle use: the EMA ones when kept."""
  if "ema" in state:
    return state["ema"]["params"], state["ema"]["batch_stats"]
  return state["params"], state["batch_stats"]


def create_train_setup(config, mesh, total_steps: int, spec: dict,
                       num_train: int = 0) -> TrainSetup:
  def init_model():
    return create_model(config.model, rngs=nnx.Rngs(config.seed))

  # Shapes first: nothing is allocated until the state is created, already sharded.
  abstract_model = nnx.eval_shape(init_model)
  _, abstract_params, abstract_stats = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)
  labels = finetune.param_labels(abstract_model, abstract_params, config)
  tx, schedule = create_optimizer(config, labels, total_steps, num_train)
  frozen_stats = finetune.frozen_stats_mask(abstract_model, abstract_stats, config)
  frozen_params = jax.tree.map(lambda label: label == "frozen", labels)
  finetune.set_train_mode(abstract_model, config)
  train_graphdef = nnx.graphdef(abstract_model)
  abstract_model.eval()
  eval_graphdef = nnx.graphdef(abstract_model)
  use_ema = bool(config.optimizer.get("ema_decay", 0.0))

  replicated = parallel.replicated(mesh)

  def init_state(model=None):
    model = model or init_model()
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = dict(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                 opt_state=tx.init(params))
    if use_ema:  # starts at the initial (e.g. pretrained) weights, as timm's does
      state["ema"] = dict(params=jax.tree.map(jnp.copy, params),
                          batch_stats=jax.tree.map(jnp.copy, batch_stats))
    return state

  abstract_state = jax.eval_shape(init_state)
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
      state_sharding)
  train_step = jax.jit(make_train_step(train_graphdef, tx, spec, config, frozen_stats,
                                       frozen_params),
                       in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
  return TrainSetup(train_step, init_state, abstract_state, state_sharding,
                    schedule, eval_graphdef, train_graphdef)
