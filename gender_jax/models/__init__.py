"""Model registry: `create_model(model_config)` for every architecture by name."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gender_jax.models import cnn_small, dlib_resnet, inception, mobilenet, resnet, vgg

ARCHS = (*resnet.SPECS, *(n + bn for n in vgg.CFGS for bn in ("", "_bn")), "cnn_small",
         *mobilenet.SPECS, "inception_v3", "dlib_resnet")

# Smallest input each arch accepts: below it, Inception-v3's unpadded strides shrink the
# feature map to nothing (it still "runs", on zero pixels).
MIN_IMAGE_SIZE = {"inception_v3": 75, "dlib_resnet": 103}

def create_model(model_config, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Builds the model a `config.model` section names; call inside `nnx.eval_shape` for shapes."""
  name = model_config.arch
  kwargs = dict(num_classes=model_config.num_classes,
                dtype=jnp.dtype(model_config.compute_dtype),
                rngs=rngs or nnx.Rngs(model_config.get("seed", 0)))
  if name in resnet.SPECS:
    # `width` (stem channels, 64 in the ImageNet models) narrows a ResNet for small budgets.
    return resnet.create(name, variant=model_config.get("variant", "torchvision"),
                         width=model_config.get("width", 0) or None, **kwargs)
  if name.removesuffix("_bn") in vgg.CFGS:
    return vgg.create(name, dropout=model_config.get("dropout", 0.5), **kwargs)
  if name == "cnn_small":
    return cnn_small.create(width=model_config.get("width", 0) or None,
                            dropout=model_config.get("dropout", 0.5), **kwargs)
  if name in mobilenet.SPECS:
    # `width` here is the multiplier of every layer's channels (1.0 = the ImageNet models).
    return mobilenet.create(name, variant=model_config.get("variant", "torchvision"),
                            width=model_config.get("width", 0) or 1.0,
                            dropout=model_config.get("dropout", 0.2), **kwargs)
  if name == "inception_v3":
    return inception.InceptionV3(dropout=model_config.get("dropout", 0.5),
                                 transform_input=model_config.get("transform_input", False),
                                 variant=model_config.get("variant", "torchvision"),
                                 **kwargs)
  if name == "dlib_resnet":
    return dlib_resnet.DlibResNet(**kwargs)
  raise ValueError(f"unknown model.arch {name!r}; choose one of {', '.join(ARCHS)}")
