"""Weight ports: torchvision and Keras ImageNet files → the flat weights of our NNX models.

The key map is driven by the target model: every parameter and batch statistic of the model
names the one source tensor it comes from and the layout transform it needs (conv OIHW→HWIO,
linear transpose, torch's NCHW flatten order before VGG's fc1). Then every source tensor must
have been used or explicitly dropped (the 1000-class head, BN's `num_batches_tracked`
counter), every shape must agree, and all problems are raised together in one error.

Readers need no framework beyond their file format: `.pth` goes through
`torch.load(weights_only=True)` (never arbitrary unpickling), `.safetensors` through the
safetensors package, Keras `.h5` (the legacy `*_tf_dim_ordering_tf_kernels*.h5` layout and
Keras 3's `.weights.h5`) through h5py.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Callable

import numpy as np
from flax import nnx

from gender_jax.models.weights import HEAD, flat_key
from gender_jax.data import preprocess
from gender_jax.models import ports_zoo
from gender_jax.models.keymaps import (_KERAS_BN_LEAF, _KERAS_LEAF, _TORCH_LEAF, IDENTITY,
                                       _by_ndim, _nchw_flatten_linear)

SOURCES = ("torchvision", "keras", "dlib")
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
ARCHS = {
    "torchvision": ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
                    *MOBILENETS, "inception_v3"),
    "keras": ("vgg16", "vgg19", "resnet50", *MOBILENETS, "inception_v3"),
    "dlib": ("dlib_resnet",),  # dlib_face_recognition_resnet_model_v1.dat
}
# The model conventions and the input each source's ImageNet weights were trained on.
VARIANT = {"torchvision": "torchvision", "keras": "keras"}
PRESET = {"torchvision": "torchvision", "keras": "caffe"}
# Keras MobileNets were trained on x/127.5 - 1 ("tf" mode, our "scratch" preset); V3 does it
# inside the model (a Rescaling layer, so its preprocess_input is the identity) and V2 in
# preprocess_input. Our models take normalised input, so the meta records it either way.
_IN_MODEL = "Rescaling(1/127.5, offset=-1) inside the Keras model"
KERAS_PREPROCESSING = dict(mobilenet_v2="preprocess_input: x/127.5 - 1", vgg16="caffe",
                           mobilenet_v3_small=_IN_MODEL, mobilenet_v3_large=_IN_MODEL,
                           vgg19="caffe", resnet50="caffe",
                           inception_v3="preprocess_input: x/127.5 - 1")
IMAGE_SIZE = 224
# MobileNet width multipliers with published ImageNet weights (Keras V2: all of them; Keras
# V3: 0.75, 1.0; torchvision: 1.0): a file's width is found among these when not given.
MOBILENET_WIDTHS = (1.0, 0.75, 0.5, 0.35, 1.3, 1.4)


# ----------------------------------------------------------------------------- reading files
def _torch_state_dict(path: str) -> dict[str, Any]:
  import torch  # only for .pth; safetensors and h5 files need no torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # weights_only refuses pickled code: say so rather than load it
    raise ValueError(f"{path}: not a plain tensor state dict loadable with "
                     f"torch.load(weights_only=True): {e}") from None
  # Training checkpoints often wrap the weights; torchvision files are the bare dict.
  for wrapper in ("state_dict", "model_state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    v = v.detach().cpu()
    out[k] = (v.float() if v.is_floating_point() else v).numpy()
  return out


def _safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  return load_file(path)


# Keras stores a layer's weights in creation order; names vary across Keras versions
# ("kernel:0", "block1_conv1_W_1:0", "vars/0"), the order does not. Three weights are a
# BatchNormalization with scale=False (InceptionV3's), the only such layer Keras ships.
_KERAS_WEIGHTS = {1: ("kernel",), 2: ("kernel", "bias"),
                  3: ("beta", "moving_mean", "moving_variance"),
                  4: ("gamma", "beta", "moving_mean", "moving_variance")}


def _keras_layer(path: str, layer: str, arrays: list[np.ndarray], out: dict) -> None:
  if not arrays:
    return
  names = _KERAS_WEIGHTS.get(len(arrays))
  if names is None:
    raise ValueError(f"{path}: layer {layer!r} has {len(arrays)} weights; a Conv2D/Dense has "
                     "1-2 and a BatchNormalization 3-4")
  out.update({f"{layer}/{n}": a for n, a in zip(names, arrays)})


def _keras_h5(path: str) -> dict[str, np.ndarray]:
  """Keras weights as {"<layer>/<kernel|bias|gamma|…>": array}."""
  import h5py
  out: dict[str, np.ndarray] = {}
  source = path
  if path.endswith(".keras"):  # a zip holding model.weights.h5 next to the config
    import io
    import zipfile
    with zipfile.ZipFile(path) as z:
      if "model.weights.h5" not in z.namelist():
        raise ValueError(f"{path}: a .keras archive without model.weights.h5")
      source = io.BytesIO(z.read("model.weights.h5"))
  with h5py.File(source, "r") as f:
    root = f["model_weights"] if "model_weights" in f else f  # a whole-model .h5 file
    if "layer_names" in root.attrs:  # legacy layout: keras-applications downloads
      for layer in root.attrs["layer_names"]:
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        group = root[layer]
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in group.attrs.get("weight_names", [])]
        _keras_layer(path, layer, [np.asarray(group[n], np.float32) for n in names], out)
    elif "layers" in root:  # Keras 3 `.weights.h5`: layers/<class_n>/vars/<i>, name in attrs
      for key, group in root["layers"].items():
        vars_ = group.get("vars")
        if vars_ is None:
          continue
        layer = vars_.attrs.get("name", key)
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        arrays = [np.asarray(vars_[str(i)], np.float32) for i in range(len(vars_))]
        _keras_layer(path, layer, arrays, out)
    else:
      raise ValueError(f"{path}: not a Keras weights file (no 'layer_names' attribute "
                       "and no 'layers' group)")
  return out


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Any supported weights file → {source name: float32 array}, by file extension."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file not found: {path}")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt", ".bin"):
    tensors = _torch_state_dict(path)
  elif ext == ".safetensors":
    tensors = _safetensors(path)
  elif ext in (".h5", ".hdf5", ".keras"):
    tensors = _keras_h5(path)
  else:
    raise ValueError(f"{path}: unknown weights format {ext!r}; expected .pth/.pt, "
                     ".safetensors, .h5 or .keras")
  # DataParallel checkpoints prefix every key with "module."; the weights are the same.
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
  return tensors


# ----------------------------------------------------------------------------- key maps
# Each returns {target key: (source key, transform)} for every key of the target model.


def _torchvision_resnet(shapes: dict[str, tuple], arch: str) -> dict:
  plan = {}
  for key, shape in shapes.items():
    *mod, leaf = key.split("/")
    mod = [{"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(m, m)
           for m in mod]
    plan[key] = (".".join(mod + [_TORCH_LEAF[leaf]]), _by_ndim(shape))
  return plan


def _torchvision_vgg(shapes: dict[str, tuple], arch: str) -> dict:
  from gender_jax.models import vgg
  name, batch_norm = arch.removesuffix("_bn"), arch.endswith("_bn")
  # torchvision's `features` is one Sequential: conv, [bn,] relu per layer, a pool per block.
  index, idx = {}, 0
  for i, widths in enumerate(vgg.CFGS[name]):
    for j in range(len(widths)):
      index[f"block{i + 1}/{j}/conv"] = idx
      index[f"block{i + 1}/{j}/bn"] = idx + 1
      idx += 3 if batch_norm else 2
    idx += 1
  classifier = {"fc1": 0, "fc2": 3, "fc": 6}
  channels = vgg.CFGS[name][-1][-1]
  plan = {}
  for key, shape in shapes.items():
    mod, leaf = key.rsplit("/", 1)
    if mod in classifier:
      src = f"classifier.{classifier[mod]}.{_TORCH_LEAF[leaf]}"
      transform = (_nchw_flatten_linear(channels, vgg.POOL_SIZE)
                   if (mod, leaf) == ("fc1", "kernel") else _by_ndim(shape))
    else:
      src, transform = f"features.{index[mod]}.{_TORCH_LEAF[leaf]}", _by_ndim(shape)
    plan[key] = (src, transform)
  return plan


def _keras_resnet(shapes: dict[str, tuple], arch: str) -> dict:
  plan = {}
  for key, shape in shapes.items():
    *mod, leaf = key.split("/")
    if mod == ["fc"]:
      layer = "predictions"
    elif mod[0] in ("conv1", "bn1"):
      layer = "conv1_conv" if mod[0] == "conv1" else "conv1_bn"
    else:  # layer{s}/{b}/{conv|bn}{k} or downsample_{conv|bn}
      stage, block, part = int(mod[0].removeprefix("layer")), int(mod[1]), mod[2]
      kind, k = ("conv", "0") if part == "downsample_conv" else (
          ("bn", "0") if part == "downsample_bn" else (part[:-1], part[-1]))
      layer = f"conv{stage + 1}_block{block + 1}_{k}_{kind}"
    names = _KERAS_BN_LEAF if layer.endswith("_bn") else _KERAS_LEAF
    plan[key] = (f"{layer}/{names[leaf]}", IDENTITY)
  return plan


def _keras_vgg(shapes: dict[str, tuple], arch: str) -> dict:
  plan = {}
  for key in shapes:
    mod, leaf = key.rsplit("/", 1)
    m = re.fullmatch(r"block(\d+)/(\d+)/conv", mod)
    layer = f"block{m[1]}_conv{int(m[2]) + 1}" if m else {"fc": "predictions"}.get(mod, mod)
    # Keras flattens block5_pool in NHWC order, as our model does: fc1 needs no permutation.
    plan[key] = (f"{layer}/{_KERAS_LEAF[leaf]}", IDENTITY)
  return plan


def _key_map(source: str, arch: str) -> Callable[[dict, str], dict]:
  if arch == "inception_v3":
    return {"torchvision": ports_zoo.torchvision_inception,
            "keras": ports_zoo.keras_inception}[source]
  if arch in MOBILENETS:
    return {"torchvision": ports_zoo.torchvision_mobilenet,
            "keras": ports_zoo.keras_mobilenet}[source]
  family = "resnet" if arch.startswith("resnet") else "vgg"
  return {("torchvision", "resnet"): _torchvision_resnet,
          ("torchvision", "vgg"): _torchvision_vgg,
          ("keras", "resnet"): _keras_resnet,
          ("keras", "vgg"): _keras_vgg}[source, family]


def target_shapes(arch: str, variant: str, num_classes: int, width: float | None = None
                  ) -> dict[str, tuple]:
  """Shapes of every parameter and batch statistic, without allocating the model; `width`
  is a MobileNet's multiplier (None: the arch's default width)."""
  import ml_collections
  from gender_jax.models import create_model
  cfg = ml_collections.ConfigDict(dict(arch=arch, num_classes=num_classes,
                                       compute_dtype="float32", variant=variant,
                                       width=width or 0))
  model = nnx.eval_shape(lambda: create_model(cfg))
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  return {flat_key(p): tuple(v.get_value().shape)
          for p, v in nnx.to_flat_state(state)}


# ----------------------------------------------------------------------------- conversion
def _is_counter(key: str) -> bool:
  return key.endswith("num_batches_tracked")  # BN's step counter: not a weight


def convert_tensors(tensors: dict[str, np.ndarray], *, source: str, arch: str,
                    keep_head: bool = False, origin: str = "weights",
                    width: float | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Source tensors → (flat weights for our model, meta). Raises once with every problem.

  Without `keep_head` the source's classifier head is dropped and the result has no "fc/"
  keys (the fine-tune head is initialised fresh). Keras VGG files saved without top have no
  fc1/fc2 either; those are then recorded in meta["fresh_prefixes"] and trained from scratch.
  A MobileNet's width multiplier (Keras's alpha) is `width`, else the one of
  MOBILENET_WIDTHS the file's shapes fit; meta["width"] records it for `model.width`.
  """
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
  if arch not in ARCHS[source]:
    raise ValueError(f"{source} has no {arch!r} port; choose from {', '.join(ARCHS[source])}")
  variant = VARIANT[source]
  if source == "keras" and arch == "inception_v3":
    tensors = ports_zoo.keras_renumber(tensors)
  # Size the head from the file, so keep_head works for any number of source classes.
  head_src = _key_map(source, arch)({HEAD + "bias": (1,)}, arch)[HEAD + "bias"][0]
  num_classes = int(np.shape(tensors[head_src])[0]) if head_src in tensors else None
  if arch in MOBILENETS:
    width = width or _fitting_width(tensors, source, arch, variant, num_classes or 1000)
  elif width not in (None, 1.0):
    raise ValueError(f"width {width} is for MobileNets; {arch} has no width multiplier")
  shapes = target_shapes(arch, variant, num_classes or 1000, width)
  plan = _key_map(source, arch)(shapes, arch)

  fresh, dropped = [], set(k for k in tensors if _is_counter(k))
  dropped |= {k for k in tensors if k.startswith("AuxLogits.")}  # a training-only head
  if source == "keras" and arch.startswith("vgg") and not (
      {"fc1", "fc2", "predictions"} & {k.split("/")[0] for k in tensors}):
    fresh += ["fc1/", "fc2/"]  # an include_top=False file: the classifier is not in it
  if source == "keras" and arch.startswith("mobilenet_v3") and not any(
      k.startswith("conv_2/") for k in tensors):
    fresh.append("fc1/")  # include_top=False: no pre-logits conv_2 either
  if not keep_head:
    fresh.append(HEAD)
    dropped |= {src for key, (src, _) in plan.items() if key.startswith(HEAD)}
  elif num_classes is None:
    raise ValueError(f"{origin}: keep_head needs the classifier head, but the file has no "
                     f"{head_src!r} (saved without top?)")

  problems, flat, used = [], {}, set()
  for key, (src, transform) in plan.items():
    if key.startswith(tuple(fresh)):
      continue
    if src not in tensors:
      problems.append(f"missing: {src} (for {key} {shapes[key]})")
      continue
    used.add(src)
    value = np.asarray(tensors[src])
    want = tuple(transform.source_shape(shapes[key]))
    if value.shape != want:
      problems.append(f"shape: {src} is {value.shape}, {key} {shapes[key]} needs {want}")
      continue
    flat[key] = np.ascontiguousarray(transform.apply(value), dtype=np.float32)
  problems += [f"unexpected: {k} {np.shape(tensors[k])}"
               for k in sorted(set(tensors) - used - dropped)]
  meta_extra = dict(keras_preprocessing=KERAS_PREPROCESSING[arch]) if source == "keras" else {}
  if problems:
    hint = ""
    if any("_branch2a/" in k for k in tensors):  # keras 2.0's ResNet50, BN epsilon 1e-3
      hint = (" (layer names like res2a_branch2a are the 2017 ResNet50 file; use the "
              "keras-applications 'resnet/resnet50_weights_tf_dim_ordering_tf_kernels' file)")
    raise ValueError(f"{origin}: {len(problems)} problem(s) porting {source} {arch}{hint}:\n  "
                     + "\n  ".join(problems))
  if arch in MOBILENETS:
    meta_extra["width"] = width
  meta = dict(arch=arch, variant=variant, source=source,
              preprocessing=preprocess.make_spec(IMAGE_SIZE, _preset(source, arch)),
              num_source_classes=num_classes, has_head=bool(keep_head),
              fresh_prefixes=fresh, dropped=sorted(k for k in dropped if not _is_counter(k)),
              **meta_extra)
  return flat, meta


def _fitting_width(tensors, source: str, arch: str, variant: str, num_classes: int) -> float:
  """The first of MOBILENET_WIDTHS whose every mapped shape agrees with the file (the first
  conv alone is not enough: V2's stem is 16 wide at both 0.35 and 0.5); else 1.0, so that
  the caller's error lists what differs."""
  for width in MOBILENET_WIDTHS:
    shapes = target_shapes(arch, variant, num_classes, width)
    plan = _key_map(source, arch)(shapes, arch)
    if all(np.shape(tensors[src]) == tuple(t.source_shape(shapes[key]))
           for key, (src, t) in plan.items() if src in tensors and not key.startswith(HEAD)):
      return width
  return 1.0


def _preset(source: str, arch: str) -> str:
  # torchvision's Inception-v3 weights see x/127.5 - 1 (its transform_input turns
  # ImageNet-normalised input into exactly that), so the port records that preset instead.
  if arch == "inception_v3" or (source == "keras" and arch in MOBILENETS):
    return "scratch"
  return PRESET[source]


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      h.update(chunk)
  return h.hexdigest()


def _convert_dlib(path: str, arch: str, keep_head: bool) -> tuple[dict, dict[str, Any]]:
  """dlib's face-recognition network: its own file format and one arch; a descriptor
  network has no classifier head, so ours is always fresh."""
  from gender_jax.models import dlib_dat, dlib_resnet
  if arch not in ARCHS["dlib"]:
    raise ValueError(f"dlib has no {arch!r} port; choose from {', '.join(ARCHS['dlib'])}")
  if keep_head:
    raise ValueError(f"{path}: dlib's network ends in a 128-d descriptor, not a classifier: "
                     "there is no head to keep")
  flat = dlib_dat.read_file(path)
  meta = dict(arch=arch, variant="dlib", source="dlib",
              preprocessing=preprocess.make_spec(dlib_resnet.NATIVE_SIZE, "dlib"),
              num_source_classes=None, has_head=False, fresh_prefixes=[HEAD], dropped=[])
  return flat, meta


def convert_file(path: str, *, source: str, arch: str, keep_head: bool = False,
                 width: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and converts one weights file; meta records where it came from."""
  if source == "dlib":
    flat, meta = _convert_dlib(path, arch, keep_head)
  else:
    flat, meta = convert_tensors(read_tensors(path), source=source, arch=arch,
                                 keep_head=keep_head, origin=path, width=width)
  meta.update(source_file=os.path.basename(path), source_sha256=_sha256(path))
  return flat, meta
