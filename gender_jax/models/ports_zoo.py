"""Key maps for the MobileNet V2/V3 and Inception-v3 ports (torchvision and Keras); ports.py
dispatches here.

Same contract as ports.py's maps: {target key: (source key, transform)} for every key of
the target model, built from the target's shapes alone.
"""
from __future__ import annotations

import re

import numpy as np

from gender_jax.models import keymaps as _c

# Keras depthwise kernels are (k, k, channels, multiplier=1); ours (k, k, 1, channels).
KERAS_DEPTHWISE = _c.Transform("(k,k,C,1)→(k,k,1,C)", lambda a: a.transpose(0, 1, 3, 2),
                               lambda s: (s[0], s[1], s[3], s[2]))
# Keras MobileNetV3 applies its post-pooling layers as 1x1 convs; ours are Linear.
KERAS_1X1_LINEAR = _c.Transform("1x1 conv→linear", lambda a: a.reshape(a.shape[2:]),
                                lambda s: (1, 1, *s))
# Keras BatchNorm with scale=False (InceptionV3) stores no gamma: ours is 1. Read from the
# beta of the same layer, so the shape is checked and the layer's tensors all count as used.
KERAS_NO_GAMMA = _c.Transform("ones (Keras BN scale=False)", np.ones_like, lambda s: s)
ROLES = ("expand", "depthwise", "se", "project")  # a block's layers, in torchvision's order


def _present_roles(shapes: dict, index: str) -> list[str]:
  return [r for r in ROLES if any(k.startswith(f"layers/{index}/{r}/") for k in shapes)]


def torchvision_mobilenet(shapes: dict[str, tuple], arch: str) -> dict:
  v2 = arch == "mobilenet_v2"
  seq = "conv" if v2 else "block"  # torchvision's name for the Sequential inside a block
  head = {"fc": "classifier.1"} if v2 else {"fc1": "classifier.0", "fc": "classifier.3"}
  plan = {}
  for key, shape in shapes.items():
    parts = key.split("/")
    leaf = _c._TORCH_LEAF[parts[-1]]
    if parts[0] in head:
      src = f"{head[parts[0]]}.{leaf}"
    elif parts[2] in ("conv", "bn"):  # the stem or the last conv: a bare Conv2dNormActivation
      src = f"features.{parts[1]}.{'0' if parts[2] == 'conv' else '1'}.{leaf}"
    else:
      i, role, rest = parts[1], parts[2], parts[3:-1]
      pos = _present_roles(shapes, i).index(role)
      if role == "se":  # SqueezeExcitation: fc1/fc2 1x1 convs
        sub = f"{pos}.{rest[0]}"
      elif role == "project" and v2:  # V2 writes its linear bottleneck as bare conv, bn
        sub = str(pos + (rest[0] == "bn"))
      else:
        sub = f"{pos}.{'0' if rest[0] == 'conv' else '1'}"
      src = f"features.{i}.{seq}.{sub}.{leaf}"
    plan[key] = (src, _c._by_ndim(shape))
  return plan


def keras_mobilenet(shapes: dict[str, tuple], arch: str) -> dict:
  v2 = arch == "mobilenet_v2"
  bn = "_BN" if v2 else "_bn"
  n_layers = 1 + max((int(k.split("/")[1]) for k in shapes if k.startswith("layers/")),
                     default=0)
  ends = {0: "Conv1" if v2 else "conv", n_layers - 1: "Conv_1" if v2 else "conv_1"}
  plan = {}
  for key, shape in shapes.items():
    parts, leaf = key.split("/"), key.rsplit("/", 1)[1]
    transform = _c.IDENTITY
    if parts[0] in ("fc", "fc1"):
      layer = {"fc": "predictions" if v2 else "logits", "fc1": "conv_2"}[parts[0]]
      transform = KERAS_1X1_LINEAR if leaf == "kernel" and not v2 else _c.IDENTITY
    elif int(parts[1]) in ends:
      name = ends[int(parts[1])]
      layer = name if parts[2] == "conv" else (f"bn_{name}" if name == "Conv1" else name + bn.lower())
    else:
      j = int(parts[1]) - 1
      prefix = "expanded_conv_" if j == 0 else (f"block_{j}_" if v2 else f"expanded_conv_{j}_")
      role = parts[2]
      if role == "se":
        layer = prefix + {"fc1": "squeeze_excite_conv", "fc2": "squeeze_excite_conv_1"}[parts[3]]
      else:
        layer = prefix + role + (bn if parts[3] == "bn" else "")
        if role == "depthwise" and parts[3] == "conv":
          transform = KERAS_DEPTHWISE
    names = _c._KERAS_BN_LEAF if leaf in ("scale", "mean", "var") or (
        leaf == "bias" and parts[-2] == "bn") else _c._KERAS_LEAF
    plan[key] = (f"{layer}/{names[leaf]}", transform)
  return plan


def torchvision_inception(shapes: dict[str, tuple], arch: str) -> dict:
  """Our modules carry torchvision's names: a rename of the leaf and a layout transform."""
  plan = {}
  for key, shape in shapes.items():
    *mod, leaf = key.split("/")
    plan[key] = (".".join(mod + [_c._TORCH_LEAF[leaf]]), _c._by_ndim(shape))
  return plan


_KERAS_UNNAMED = re.compile(r"(conv2d|batch_normalization)(?:_(\d+))?/(.+)")


def keras_renumber(tensors: dict) -> dict:
  """Keras InceptionV3's layers are unnamed: conv2d, conv2d_1, … numbered by the session that
  built them (the keras-applications file starts at conv2d_1, a fresh Keras 3 at conv2d).
  Renumbers each kind from 0 in that order, so the key map can name them by creation order."""
  numbers = {}
  for key in tensors:
    m = _KERAS_UNNAMED.fullmatch(key)
    if m:
      numbers.setdefault(m[1], set()).add(int(m[2] or 0))
  rank = {kind: {n: i for i, n in enumerate(sorted(ns))} for kind, ns in numbers.items()}
  out = {}
  for key, value in tensors.items():
    m = _KERAS_UNNAMED.fullmatch(key)
    out[f"{m[1]}_{rank[m[1]][int(m[2] or 0)]}/{m[3]}" if m else key] = value
  return out


def keras_inception(shapes: dict[str, tuple], arch: str) -> dict:
  """Source names as `keras_renumber` leaves them: conv2d_i / batch_normalization_i is our
  i-th BasicConv2d in creation order; the Dense head is `predictions`."""
  from gender_jax.models import inception
  index = {path: i for i, path in enumerate(inception.conv_order())}
  plan = {}
  for key in shapes:
    *mod, part, leaf = key.split("/")
    if not mod:  # fc/kernel, fc/bias
      plan[key] = (f"predictions/{_c._KERAS_LEAF[leaf]}", _c.IDENTITY)
      continue
    i = index["/".join(mod)]
    if part == "conv":
      plan[key] = (f"conv2d_{i}/{_c._KERAS_LEAF[leaf]}", _c.IDENTITY)
    elif leaf == "scale":
      plan[key] = (f"batch_normalization_{i}/beta", KERAS_NO_GAMMA)
    else:
      plan[key] = (f"batch_normalization_{i}/{_c._KERAS_BN_LEAF[leaf]}", _c.IDENTITY)
  return plan
