"""dlib's `.dat` serialization of the face-recognition ResNet: read it, and write it back.

dlib writes a network as nested C++ objects with no field names: `add_layer` wrappers
write a version and their sub-network before their own layer, so the file runs from the
loss layer's header down to the input and then back up through every layer's details.
The grammar below follows `anet_type` of dlib's `dnn_face_recognition_ex.cpp` field by
field (dlib/dnn/core.h, layers.h, input.h, loss.h, cuda/tensor.h, serialize.h), so reading
checks every version tag, shape and layer kind on the way; a file of another network fails
with the offset and what was expected there. Writing uses the same grammar, so a model
written by us loads in dlib itself (the parity test's proof that the two agree).

Encodings (serialize.h): an integer is a control byte (its byte count, 0x80 if negative)
then little-endian bytes; a bool is the character '0' or '1'; a string is its length then its
bytes; a float or double is a mantissa and a base-2 exponent, two integers; a tensor is
version 2, four dims, then little-endian float32 values.
"""
from __future__ import annotations

import math

import numpy as np

from gender_jax.data.preprocess import PRESETS
from gender_jax.models.dlib_resnet import LEVELS

INPUT_MEAN = PRESETS["dlib"]["mean"]  # input_rgb_image_sized's avg_red/green/blue


class _Reader:
  def __init__(self, data: bytes, origin: str):
    self.data, self.pos, self.origin = data, 0, origin

  def fail(self, what: str):
    raise ValueError(f"{self.origin}: at byte {self.pos:,}: {what} (not dlib's "
                     "dlib_face_recognition_resnet_model_v1 network?)")

  def take(self, n: int) -> bytes:
    if self.pos + n > len(self.data):
      self.fail(f"file ends inside a field (needs {n} more bytes)")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def int(self, value=None, expect: int | None = None) -> int:
    del value  # the writer's argument: reading takes what the file holds
    ctrl = self.take(1)[0]
    size = ctrl & 0x0F
    if ctrl & 0x70 or size > 8:
      self.fail(f"control byte {ctrl:#04x} is not an integer's")
    value = int.from_bytes(self.take(size), "little")
    value = -value if ctrl & 0x80 else value
    if expect is not None and value != expect:
      self.pos -= size + 1
      self.fail(f"expected {expect}, found {value}")
    return value

  def bool(self, value=None) -> bool:
    del value
    ch = self.take(1)
    if ch not in (b"0", b"1"):
      self.fail(f"expected a bool ('0' or '1'), found {ch!r}")
    return ch == b"1"

  def str(self, expect: tuple[str, ...] | str | None = None) -> str:
    n = self.int()
    s = self.take(n).decode("latin-1")
    if expect is not None and s not in ((expect,) if isinstance(expect, str) else expect):
      self.pos -= n
      self.fail(f"expected layer {expect!r}, found {s!r}")
    return s

  def float(self, value=None, digits=None) -> float:
    del value, digits
    mantissa, exponent = self.int(), self.int()
    return math.ldexp(mantissa, exponent)

  def dims(self, version: int) -> tuple[int, ...]:
    self.int(expect=version)
    return tuple(self.int() for _ in range(4))

  def tensor(self, value=None) -> np.ndarray:
    del value
    shape = self.dims(2)
    count = int(np.prod(shape))
    return np.frombuffer(self.take(4 * count), "<f4").reshape(shape).astype(np.float32)

  def alias(self, value=None) -> tuple[int, ...]:
    del value
    return self.dims(1)


class _Writer:
  def __init__(self):
    self.out = bytearray()

  def int(self, value: int, expect=None) -> int:
    del expect
    mag = abs(int(value))
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    self.out += bytes([len(body) | (0x80 if value < 0 else 0)]) + body
    return value

  def bool(self, value: bool) -> bool:
    self.out += b"1" if value else b"0"
    return value

  def str(self, value: str, expect=None) -> str:
    del expect
    self.int(len(value))
    self.out += value.encode("latin-1")
    return value

  def float(self, value: float, digits: int = 24) -> float:
    # dlib's float_details: frexp's mantissa scaled to the type's digits (24 for a float,
    # 53 for a double), then up to 8 zero low bytes shifted off the mantissa.
    m, e = math.frexp(float(np.float32(value)) if digits == 24 else value)
    mantissa, exponent = int(m * (1 << digits)), e - digits
    for _ in range(8):
      if mantissa & 0xFF:
        break
      mantissa >>= 8
      exponent += 8
    self.int(mantissa)
    self.int(exponent)
    return value

  def tensor(self, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32).reshape(_as4(np.shape(value)))
    self.int(2)
    for d in value.shape:
      self.int(d)
    self.out += value.astype("<f4").tobytes()
    return value

  def alias(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    self.int(1)
    for d in shape:
      self.int(d)
    return shape


def _as4(shape) -> tuple[int, ...]:
  return (*shape, *(1,) * (4 - len(shape))) if len(shape) < 4 else tuple(shape)


# ----------------------------------------------------------------------------- the grammar
# The network as dlib nests it, output first: ("loss", sub), ("layer", kind, args, sub),
# ("tag"|"skip", sub), ("input",). `kind` is the layer's details; `args` its fixed shape.
def _block(n: int, stride: int, sub):
  sub = ("layer", "con", (n, 3, stride), sub)
  sub = ("layer", "affine", (), sub)
  sub = ("layer", "relu", (), sub)
  sub = ("layer", "con", (n, 3, 1), sub)
  return ("layer", "affine", (), sub)


def _ares(n: int, sub):
  return ("layer", "relu", (), ("layer", "add_prev", (), _block(n, 1, ("tag", sub))))


def _ares_down(n: int, sub):
  inner = ("skip", ("tag", _block(n, 2, ("tag", sub))))
  return ("layer", "relu", (), ("layer", "add_prev", (),
                                ("layer", "avg_pool", (2, 2), inner)))


def network():
  net = ("layer", "con", (32, 7, 2), ("input",))
  net = ("layer", "max_pool", (3, 2), ("layer", "relu", (), ("layer", "affine", (), net)))
  for _, width, n, down in LEVELS:
    for j in range(n):
      net = (_ares_down if down and j == 0 else _ares)(width, net)
  net = ("layer", "fc", (128,), ("layer", "avg_pool", (0, 1), net))
  return ("loss", net)


def _details(io, kind: str, args: tuple, weights: list, reading: bool):
  """One layer's own fields. `weights` holds the conv, affine and fc layers' tensors in file
  order: reading appends to it, writing consumes it from the front. Every io call takes the
  value to write, which reading ignores; `put` builds one from the layer only when writing."""
  layer = {} if reading or kind not in ("con", "affine", "fc") else weights.pop(0)
  put = lambda make: None if reading else make()  # noqa: E731
  if kind == "con":
    n, k, stride = args
    version = io.str(("con_4", "con_5", "con_6") if reading else "con_4")
    params = io.tensor(put(lambda: np.concatenate(
        [layer["filters"].ravel(), layer["biases"].ravel()])[:, None]))
    io.int(n, expect=n)
    for v in (k, k, stride, stride):
      io.int(v, expect=v)
    pad = 0 if stride != 1 else k // 2
    io.int(pad, expect=pad); io.int(pad, expect=pad)
    shape = io.alias(put(lambda: layer["filters"].shape))
    io.alias((1, n, 1, 1))  # the biases
    for mult in (1.0, 1.0, 1.0, 0.0):  # learning-rate and weight-decay multipliers
      io.float(mult, digits=53)  # doubles
    if reading:
      if version in ("con_5", "con_6"):
        if not io.bool():
          io.fail("a conv without biases; this network's have them")
        if version == "con_6":
          io.bool()  # use_relu: a fused relu, followed by relu_ layers that are disabled
      nf = int(np.prod(shape))
      flat = params.ravel()
      if shape[0] != n or shape[2:] != (k, k) or flat.size != nf + n:
        io.fail(f"a {n}-filter {k}x{k} conv holds {shape} filters in {flat.size} values")
      weights.append(dict(filters=flat[:nf].reshape(shape), biases=flat[nf:]))
  elif kind == "affine":
    version = io.str(("affine_", "affine_2") if reading else "affine_")
    params = io.tensor(put(lambda: np.concatenate([layer["gamma"], layer["beta"]])[:, None]))
    c = io.alias(put(lambda: (1, layer["gamma"].size, 1, 1)))
    io.alias(c)  # beta: the same shape
    io.int(0, expect=0)  # CONV_MODE
    if version == "affine_2":
      io.bool()  # disabled
    if reading:
      nc = int(np.prod(c))
      flat = params.ravel()
      if flat.size != 2 * nc:
        io.fail(f"an affine layer of {nc} channels holds {flat.size} values")
      weights.append(dict(gamma=flat[:nc], beta=flat[nc:]))
  elif kind == "relu":
    if io.str(("relu_", "relu_2") if reading else "relu_") == "relu_2":
      if io.bool():
        io.fail("a disabled relu; this network uses every one")
  elif kind == "add_prev":
    io.str("add_prev_")
  elif kind in ("avg_pool", "max_pool"):
    size, stride = args  # size 0: the whole feature map (avg_pool_everything)
    io.str(f"{kind}_2")
    for v in (size, size, stride, stride, 0, 0):  # no padding: stride 2, or whole-map pools
      io.int(v, expect=v)
  elif kind == "fc":
    (n,) = args
    version = io.str(("fc_2", "fc_3") if reading else "fc_2")
    io.int(n, expect=n)
    n_in = io.int(put(lambda: layer["weights"].shape[0]))
    params = io.tensor(put(lambda: layer["weights"]))
    io.alias((n_in, n, 1, 1))
    io.alias((0, 0, 0, 0))  # biases: none (fc_no_bias)
    io.int(1, expect=1)  # FC_NO_BIAS
    for mult in (1.0, 1.0, 1.0, 0.0):
      io.float(mult, digits=53)  # doubles
    if version == "fc_3":
      io.bool()  # use_bias
    if reading:
      flat = params.ravel()
      if flat.size != n_in * n:
        io.fail(f"the {n}-d descriptor layer holds {flat.size} values, not {n_in}x{n}")
      weights.append(dict(weights=flat.reshape(n_in, n)))
  else:
    raise AssertionError(kind)


def _walk(io, node, weights: list, reading: bool, parent: str = "") -> None:
  """Reads or writes `node` in dlib's field order (see the module docstring); `parent` is
  the kind of the layer that consumes its output."""
  head = node[0]
  if head == "loss":
    io.int(1, expect=1)
    io.str("loss_metric_2")
    io.float(0.04); io.float(0.6)  # margin, distance threshold
    _walk(io, node[1], weights, reading)
    return
  if head in ("tag", "skip"):
    io.int(1, expect=1)
    _walk(io, node[1], weights, reading, parent)
    return
  _, kind, args, sub = node
  on_input = sub[0] == "input"
  io.int(3 if on_input else 2, expect=3 if on_input else 2)
  if on_input:
    io.str("input_rgb_image_sized")
    for m in INPUT_MEAN:
      io.float(m)
    io.int(150, expect=150); io.int(150, expect=150)
  else:
    _walk(io, sub, weights, reading, kind)
  _details(io, kind, args, weights, reading)
  # Set up; gradient stale; output and gradient buffers handed to the in-place relu above
  # (dlib sets the last for an affine or add_prev layer that a relu consumes).
  for flag in (True, True, kind in ("affine", "add_prev") and parent == "relu"):
    io.bool(flag)
  for _ in range(3):  # cached tensors (x_grad, output, gradient): empty in a saved model
    io.tensor(np.zeros((0, 0, 0, 0), np.float32))
  if on_input:
    io.int(1)  # sample expansion factor


def read_layers(data: bytes, origin: str = "dlib file") -> list[dict[str, np.ndarray]]:
  """The weights of every conv, affine and fc layer, input to output, checked on the way."""
  reader, weights = _Reader(data, origin), []
  _walk(reader, network(), weights, reading=True)
  if reader.pos != len(data):
    reader.fail(f"{len(data) - reader.pos:,} bytes left after the network")
  return weights


def write_layers(weights: list[dict[str, np.ndarray]]) -> bytes:
  """The inverse of `read_layers`: a file dlib's `face_recognition_model_v1` loads."""
  writer, queue = _Writer(), list(weights)
  _walk(writer, network(), queue, reading=False)
  return bytes(writer.out)


# ----------------------------------------------------------------------------- ↔ our keys
def _keys() -> list[tuple[str, str]]:
  """(our prefix, "con"|"affine"|"fc") for every weighted layer, in the file's order."""
  keys = [("conv1", "con"), ("aff1", "affine")]
  for name, _, n, _ in LEVELS:
    for j in range(n):
      keys += [(f"{name}/{j}/conv1", "con"), (f"{name}/{j}/aff1", "affine"),
               (f"{name}/{j}/conv2", "con"), (f"{name}/{j}/aff2", "affine")]
  return keys + [("embed", "fc")]


def to_flat(layers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """dlib's layers → the flat weights of `DlibResNet` (no "fc/" head: dlib has none)."""
  flat = {}
  for (prefix, kind), layer in zip(_keys(), layers, strict=True):
    if kind == "con":  # dlib filters are OIHW cross-correlations, like torch's
      flat[f"{prefix}/kernel"] = layer["filters"].transpose(2, 3, 1, 0)
      flat[f"{prefix}/bias"] = layer["biases"]
    elif kind == "affine":
      flat[f"{prefix}/scale"], flat[f"{prefix}/bias"] = layer["gamma"], layer["beta"]
    else:  # fc: (inputs, outputs), nnx.Linear's layout already
      flat[f"{prefix}/kernel"] = layer["weights"]
  return {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}


def from_flat(flat: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """The inverse of `to_flat`, for writing a model back in dlib's format."""
  layers = []
  for prefix, kind in _keys():
    if kind == "con":
      layers.append(dict(filters=np.asarray(flat[f"{prefix}/kernel"]).transpose(3, 2, 0, 1),
                         biases=np.asarray(flat[f"{prefix}/bias"])))
    elif kind == "affine":
      layers.append(dict(gamma=np.asarray(flat[f"{prefix}/scale"]),
                         beta=np.asarray(flat[f"{prefix}/bias"])))
    else:
      layers.append(dict(weights=np.asarray(flat[f"{prefix}/kernel"])))
  return layers


def read_file(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    return to_flat(read_layers(f.read(), origin=path))
