"""Fine-tuning on 8 fake CPU devices: frozen stages are the loaded network (no update, no
statistic change, inference-mode output), model.bn='frozen', and the EMA of the weights."""
from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gender_jax import cli, parallel
from gender_jax.train import schedule as config_lib
from gender_jax.train import checkpoint, resume
from gender_jax.train import loop as trainer
from gender_jax.train import steps
from gender_jax.models.weights import to_flat
from gender_jax.data import preprocess
from gender_jax.models import create_model
from tests.helpers import bundle_weights, tiny_config

BACKBONE = ("stem", "layer1", "layer2", "layer3", "layer4")  # resnet_tiny's feature stages
CLIP = 0.02


def _stage(key: str) -> str:
  first = key.split("/")[0]
  return "stem" if first in ("conv1", "bn1") else first


@pytest.fixture(scope="module")
def mesh():
  return parallel.create_mesh()


@pytest.fixture(scope="module")
def batch(mesh):
  rng = np.random.default_rng(0)
  return parallel.put_batch(dict(image=rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
                                 label=rng.integers(0, 2, 32).astype(np.int32)), mesh)


def step_config(**overrides):
  """SGD without momentum or decay at a constant rate: updates are −lr·g, easy to reason on."""
  return tiny_config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.0,
                        "optimizer.weight_decay": 0.0, "optimizer.warmup_steps": 0,
                        "optimizer.end_lr_fraction": 1.0, "optimizer.lr": 0.1,
                        "model.dropout": 0.5, **overrides})


def loaded_model(config):
  """Stands in for pretrained weights: a random head (it starts at zero, which would send no
  gradient to the backbone) and BatchNorm statistics unlike any batch's."""
  model = create_model(config.model, rngs=nnx.Rngs(config.seed))
  model.fc.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), model.fc.kernel.shape)
  for i, (path, bn) in enumerate(nnx.iter_modules(model)):
    if isinstance(bn, nnx.BatchNorm):
      k1, k2 = jax.random.split(jax.random.key(100 + i))
      bn.mean[...] = 0.1 * jax.random.normal(k1, bn.mean.shape)
      bn.var[...] = jax.random.uniform(k2, bn.var.shape, minval=0.5, maxval=2.0)
  return model


def setup_and_state(config, mesh):
  spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
  setup = steps.create_train_setup(config, mesh, 10, spec)
  # Built under jit: one compile, not one per parameter shape (slow on a busy CPU).
  state = jax.jit(lambda: setup.init_state(loaded_model(config)),
                  out_shardings=setup.state_sharding)()
  return setup, state


def flat_state(state) -> dict[str, dict[str, np.ndarray]]:
  """Host copies (the step donates its input) of params, stats and their EMA, flat."""
  out = {"params": to_flat(state["params"]),
         "batch_stats": to_flat(state["batch_stats"])}
  if "ema" in state:
    out["ema_params"] = to_flat(state["ema"]["params"])
    out["ema_batch_stats"] = to_flat(state["ema"]["batch_stats"])
  return out


def forward(graphdef, state, images, spec, method=None):
  """The model of `graphdef` (train or eval graph) on `images`, without touching `state`."""
  @jax.jit
  def run(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    x = preprocess.normalize(images, spec, jnp.float32)
    return model.features(x) if method == "features" else model(x, rngs=nnx.Rngs(dropout=7))
  return jax.device_get(run(state["params"], state["batch_stats"], images))


# ----------------------------------------------------------------------------- frozen stages
@pytest.fixture(scope="module")
def head_run(mesh, batch):
  """Head mode with the EMA and clipping on: the setup, the loaded state (a copy), and the
  state after one step and after two."""
  config = step_config(**{"finetune.mode": "head", "optimizer.ema_decay": 0.9,
                          "optimizer.grad_clip_norm": CLIP})
  setup, state = setup_and_state(config, mesh)
  loaded = jax.tree.map(jnp.copy, state)
  before = flat_state(state)
  state, first_metrics = setup.train_step(state, batch)
  first = flat_state(state)
  state, _ = setup.train_step(state, batch)
  return (config, setup, loaded, before, flat_state(state), first,
          jax.device_get(first_metrics))


def test_head_step_leaves_every_frozen_variable_and_statistic_bit_identical(head_run):
  *_, before, after, _, _ = head_run
  for key, value in before["params"].items():
    if key.startswith("fc/"):
      assert not np.array_equal(value, after["params"][key]), f"{key} should have trained"
      assert not np.array_equal(after["ema_params"][key], after["params"][key])
    else:
      np.testing.assert_array_equal(value, after["params"][key], err_msg=key)
      np.testing.assert_array_equal(value, after["ema_params"][key], err_msg=key)
  for key, value in before["batch_stats"].items():
    np.testing.assert_array_equal(value, after["batch_stats"][key], err_msg=key)
    np.testing.assert_array_equal(value, after["ema_batch_stats"][key], err_msg=key)


def _check_frozen_stages(setup, state, images, frozen_all: bool):
  spec = preprocess.make_spec(16)
  train = forward(setup.train_graphdef, state, images, spec, "features")
  evaluated = forward(setup.eval_graphdef, state, images, spec, "features")
  stages = sorted(train, key=lambda s: (s != "stem", s))  # input to output
  frozen = stages if frozen_all else stages[:-1]
  for stage in frozen:
    np.testing.assert_array_equal(train[stage], evaluated[stage], err_msg=stage)
  for stage in set(stages) - set(frozen):
    assert not np.allclose(train[stage], evaluated[stage]), stage
  if frozen_all:  # the whole network but the head: the logits too (cnn_small: dropout off)
    np.testing.assert_array_equal(forward(setup.train_graphdef, state, images, spec),
                                  forward(setup.eval_graphdef, state, images, spec))


@pytest.mark.parametrize("arch,mode", [("resnet_tiny", "head"), *(
    pytest.param(*p, marks=pytest.mark.slow) for p in (("resnet_tiny", "last_n"),
                                                        ("cnn_small", "head")))])
def test_frozen_stages_in_the_train_graph_compute_what_inference_does(
    head_run, mesh, batch, arch, mode):
  """Frozen stages' BatchNorm on running averages and dropout off in the train graph: their
  output equals the eval graph's, bit for bit; a trainable stage's does not (batch stats)."""
  if (arch, mode) == ("resnet_tiny", "head"):
    _, setup, state, *_ = head_run
  else:
    overrides = {"model.arch": arch, "finetune.mode": mode, "finetune.last_n": 1}
    if arch == "cnn_small":
      overrides["model.width"] = 4
    setup, state = setup_and_state(step_config(**overrides), mesh)
  _check_frozen_stages(setup, state, batch["image"], frozen_all=mode == "head")


def test_grad_norm_and_clipping_cover_trainable_gradients_only(head_run, batch):
  """Head mode: the frozen backbone computes what inference does, so the head's gradient is
  the gradient of the eval graph's loss with respect to fc alone; grad_norm is its norm and
  clipping scales the update by it, not by a norm that takes in the frozen leaves."""
  config, setup, state, before, _, first, metrics = head_run
  spec = preprocess.make_spec(16)

  @jax.jit
  def head_grads(params, batch_stats, images, labels):
    def loss_fn(fc):
      model = nnx.merge(setup.eval_graphdef, params, batch_stats, copy=True)
      model.fc.kernel[...], model.fc.bias[...] = fc["kernel"], fc["bias"]
      logits = model(preprocess.normalize(images, spec, jnp.float32))
      targets = optax.smooth_labels(jax.nn.one_hot(labels, 2), config.label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean()
    return jax.grad(loss_fn)({"kernel": params["fc"]["kernel"][...],
                              "bias": params["fc"]["bias"][...]})

  grads = jax.device_get(head_grads(state["params"], state["batch_stats"], batch["image"],
                                    batch["label"]))
  norm = float(np.sqrt(sum(np.sum(np.float64(g) ** 2) for g in grads.values())))
  assert float(metrics["grad_norm"][0]) == pytest.approx(norm, rel=1e-5)
  assert norm > 2 * CLIP  # so the step clipped
  for k in grads:  # SGD, no momentum: update = −lr · g · CLIP / ‖g_fc‖
    np.testing.assert_allclose(before["params"][f"fc/{k}"] - first["params"][f"fc/{k}"],
                               0.1 * grads[k] * CLIP / norm, rtol=1e-3, atol=1e-7, err_msg=k)

  # optax's clip over a tree holding zero leaves (the frozen gradients) equals its clip over
  # the trainable ones bit for bit: adding 0.0 to the sum of squares is exact. So the
  # trainer's clip needs no mask.
  clip = optax.clip_by_global_norm(norm / 4)
  with_zeros = {"fc": grads, "frozen": {"w": np.zeros((64, 64), np.float32)}}
  clipped_all = jax.jit(lambda g: clip.update(g, clip.init(g))[0])(with_zeros)
  clipped_fc = jax.jit(lambda g: clip.update(g, clip.init(g))[0])({"fc": grads})
  for k in grads:
    np.testing.assert_array_equal(clipped_all["fc"][k], clipped_fc["fc"][k])
    assert not np.array_equal(clipped_fc["fc"][k], grads[k])  # it did clip


def test_bn_frozen_keeps_every_statistic_while_all_layers_train(mesh, batch):
  config = step_config(**{"finetune.mode": "all", "model.bn": "frozen"})
  setup, state = setup_and_state(config, mesh)
  spec = preprocess.make_spec(16)
  # No batch statistics anywhere in the train graph: it computes what inference does.
  np.testing.assert_array_equal(forward(setup.train_graphdef, state, batch["image"], spec),
                                forward(setup.eval_graphdef, state, batch["image"], spec))
  before = flat_state(state)
  for _ in range(2):
    state, _ = setup.train_step(state, batch)
  after = flat_state(state)
  for key, value in before["batch_stats"].items():
    np.testing.assert_array_equal(value, after["batch_stats"][key], err_msg=key)
  for stage in BACKBONE:
    assert any(not np.array_equal(v, after["params"][k]) for k, v in before["params"].items()
               if _stage(k) == stage and k.endswith("kernel")), f"{stage} should have trained"


def test_bad_bn_and_ema_values_fail_clearly():
  with pytest.raises(ValueError, match="model.bn='sometimes': choose 'train'"):
    config_lib.validate(tiny_config(**{"model.bn": "sometimes"}))
  with pytest.raises(ValueError, match=r"optimizer.ema_decay=1.0: use 0 \(off\)"):
    config_lib.validate(tiny_config(**{"optimizer.ema_decay": 1.0}))
  with pytest.raises(ValueError, match="model.bn='frozen' keeps the loaded statistics"):
    config_lib.validate(tiny_config(**{"model.bn": "frozen"}))  # demo: finetune.mode=scratch
  config_lib.validate(tiny_config(**{"model.bn": "frozen", "finetune.mode": "all",
                                     "optimizer.ema_decay": 0.999}))


# ----------------------------------------------------------------------------- EMA
def test_ema_after_k_steps_is_the_closed_form_average_of_the_trajectory(mesh, batch):
  decay, k = 0.8, 4
  config = step_config(**{"finetune.mode": "all", "optimizer.ema_decay": decay})
  setup, state = setup_and_state(config, mesh)
  trajectory = [flat_state(state)]
  for _ in range(k):
    state, _ = setup.train_step(state, batch)
    trajectory.append(flat_state(state))
  # d^k p_0 + (1 − d) Σ_i d^(k−i) p_i, statistics as well as parameters.
  weights = [decay**k] + [(1 - decay) * decay**(k - i) for i in range(1, k + 1)]
  for part in ("params", "batch_stats"):
    final = trajectory[-1][f"ema_{part}"]
    for key in final:
      expected = sum(w * np.float64(p[part][key]) for w, p in zip(weights, trajectory))
      np.testing.assert_allclose(final[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    moved = [key for key in final if not np.array_equal(final[key], trajectory[-1][part][key])]
    assert moved, f"the EMA {part} should differ from the live ones"


def test_ema_warmup_ramps_the_decay():
  from gender_jax.train import steps
  config = tiny_config(**{"optimizer.ema_decay": 0.5, "optimizer.ema_warmup": True})
  got = [float(steps.ema_decay_at(config, jnp.int32(t))) for t in (0, 1, 8, 100)]
  assert got == pytest.approx([1 / 10, 2 / 11, 0.5, 0.5])
  config.optimizer.ema_warmup = False
  assert float(steps.ema_decay_at(config, jnp.int32(0))) == 0.5


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """6 steps with the EMA on, checkpoints at 3 and 6; then the step-3 checkpoint alone in a
  fresh workdir, resumed to the end."""
  config = lambda: tiny_config(**{"optimizer.ema_decay": 0.7,  # noqa: E731
                                  "checkpoint.checkpoint_every_steps": 3,
                                  "after_training": ""})
  ref = str(tmp_path_factory.mktemp("ema_ref"))
  result = trainer.train_and_evaluate(config(), ref)
  resumed = str(tmp_path_factory.mktemp("ema_resumed"))
  shutil.copytree(os.path.join(ref, "checkpoints", "3"),
                  os.path.join(resumed, "checkpoints", "3"))
  resumed_result = trainer.train_and_evaluate(config(), resumed)
  return config, ref, result, resumed, resumed_result


@pytest.mark.slow
def test_bundle_holds_the_ema_weights_and_both_are_validated(ema_run, mesh):
  config, ref, result, *_ = ema_run
  assert result["step"] == 6
  assert "val_accuracy" in result and "val_live_accuracy" in result
  spec = preprocess.make_spec(16)
  setup = steps.create_train_setup(config(), mesh, 6, spec)
  state, _ = checkpoint.restore(os.path.join(ref, "checkpoints"), setup.abstract_state, step=6)
  ema = {**to_flat(state["ema"]["params"]),
         **to_flat(state["ema"]["batch_stats"])}
  live = {**to_flat(state["params"]), **to_flat(state["batch_stats"])}
  bundle = bundle_weights(ref)
  assert bundle.keys() == ema.keys()
  for key in bundle:
    np.testing.assert_array_equal(bundle[key], ema[key], err_msg=key)
  assert any(not np.array_equal(bundle[k], live[k]) for k in bundle)


@pytest.mark.slow
def test_resume_with_ema_is_bit_exact(ema_run):
  _, ref, result, resumed, resumed_result = ema_run
  assert resumed_result["step"] == 6 and not resumed_result["preempted"]
  w_ref, w = bundle_weights(ref), bundle_weights(resumed)
  assert w_ref.keys() == w.keys()
  for k in w_ref:
    np.testing.assert_array_equal(w_ref[k], w[k], err_msg=k)
  assert resumed_result["val_accuracy"] == result["val_accuracy"]


@pytest.mark.slow
def test_ema_switched_on_or_off_at_resume(ema_run, mesh, tmp_path):
  """A checkpoint without an EMA resumed by a run keeping one starts it at the restored
  weights; one with an EMA resumed without is refused clearly."""
  config, ref, *_ = ema_run
  spec = preprocess.make_spec(16)
  plain = steps.create_train_setup(tiny_config(), mesh, 6, spec)
  with pytest.raises(cli.UsageError, match="checkpoint keeps an EMA"):
    resume.restore(os.path.join(ref, "checkpoints"), plain)
  manager = checkpoint.create_manager(str(tmp_path / "plain"), keep=1, best_metric=None,
                                      async_save=False)
  checkpoint.save(manager, 1, jax.jit(plain.init_state, out_shardings=plain.state_sharding)(),
                  {})
  manager.wait_until_finished()
  with_ema = steps.create_train_setup(config(), mesh, 6, spec)
  state, _ = resume.restore(manager, with_ema)
  assert jax.tree.structure(state) == jax.tree.structure(with_ema.abstract_state)
  for part in ("params", "batch_stats"):
    live, ema = to_flat(state[part]), to_flat(state["ema"][part])
    for key in live:
      np.testing.assert_array_equal(live[key], ema[key], err_msg=key)


def test_frozen_gradients_are_outside_clipping_and_grad_norm():
  """Head mode: the logged grad_norm is the head's own and clipping scales by it alone.
  Reference: the head's gradient from an `all`-mode SGD step (update = −lr·g, same forward)."""
  import numpy as np
  from gender_jax.models.weights import to_flat
  from flax import nnx
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  mesh = parallel.create_mesh()
  rng = np.random.default_rng(0)
  batch = parallel.put_batch(dict(image=rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
                                  label=rng.integers(0, 2, 32).astype(np.int32)), mesh)

  def one_step(mode, clip, bn="train"):
    config = tiny_config(**{"finetune.mode": mode, "model.bn": bn, "optimizer.name": "sgd",
                            "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
                            "optimizer.warmup_steps": 0, "optimizer.end_lr_fraction": 1.0,
                            "optimizer.lr": 0.1, "optimizer.grad_clip_norm": clip})
    spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
    setup = steps.create_train_setup(config, mesh, 10, spec)
    # A random head (it starts at zero): else no gradient reaches the backbone in `all` mode.
    model = create_model(config.model, rngs=nnx.Rngs(config.seed))
    model.fc.kernel.value = 0.3 * jax.random.normal(jax.random.key(1), model.fc.kernel.shape)
    state = jax.device_put(setup.init_state(model), setup.state_sharding)
    before = to_flat(state["params"])
    state, metrics = setup.train_step(state, batch)
    after = to_flat(state["params"])
    grad_norm = float(jax.device_get(metrics["grad_norm"][0]))
    return {k: before[k] - after[k] for k in before}, grad_norm

  # The reference runs every BN on its statistics, as head mode runs the frozen backbone's.
  delta_all, norm_all = one_step("all", 0.0, bn="frozen")
  head_grad = {k: d / 0.1 for k, d in delta_all.items() if k.startswith("fc/")}
  head_norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in head_grad.values())))
  clip = head_norm / 4
  delta_head, norm_head = one_step("head", clip)
  assert norm_head == pytest.approx(head_norm, rel=1e-4) and norm_head < norm_all
  for k, d in delta_head.items():
    if k.startswith("fc/"):  # clipped by the head's norm, not the whole network's
      np.testing.assert_allclose(d, 0.1 * head_grad[k] / 4, rtol=1e-3, atol=1e-7, err_msg=k)
    else:
      assert not np.any(d), k
