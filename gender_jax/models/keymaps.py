"""The pieces every port's key map is built from: layout transforms and leaf-name tables.

A key map returns {target key: (source key, transform)} for every key of the target model;
`ports.py` (ResNet, VGG) and `ports_zoo.py` (MobileNet, Inception) build theirs from these.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  """A layout change, with the source shape it expects for a given target shape."""
  name: str
  apply: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[tuple], tuple]


IDENTITY = Transform("identity", lambda a: a, lambda s: s)
CONV_OIHW = Transform("OIHW→HWIO", lambda a: a.transpose(2, 3, 1, 0),
                      lambda s: (s[3], s[2], s[0], s[1]))
LINEAR = Transform("transpose", lambda a: a.T, lambda s: s[::-1])


def _nchw_flatten_linear(channels: int, size: int) -> Transform:
  """torch Linear after an NCHW flatten → our kernel after an NHWC flatten."""
  def apply(a):
    out = a.shape[0]
    return a.reshape(out, channels, size, size).transpose(2, 3, 1, 0).reshape(-1, out)
  return Transform("NCHW-flatten→NHWC, transpose", apply, lambda s: s[::-1])


def _by_ndim(shape: tuple) -> Transform:
  return {4: CONV_OIHW, 2: LINEAR}.get(len(shape), IDENTITY)


# Leaf names: ours → the library's.
_TORCH_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight",
               "mean": "running_mean", "var": "running_var"}
_KERAS_LEAF = {"kernel": "kernel", "bias": "bias", "scale": "gamma", "mean": "moving_mean",
               "var": "moving_variance"}
_KERAS_BN_LEAF = dict(_KERAS_LEAF, bias="beta")
