"""A minimal reader of TFLite flatbuffers: tensors, constant buffers and operators.

Just enough of the schema (tensorflow/lite/schema/schema.fbs) to read the BlazeFace
detectors, so converting their weights needs neither TensorFlow nor the flatbuffers
package. A flatbuffer is little-endian: a table starts with an int32 offset back to its
vtable, whose uint16 entries give each field's offset inside the table (0 = absent,
default value); references to tables, vectors and strings are uint32 offsets forward
from where they are stored.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from typing import Any

import numpy as np

# BuiltinOperator codes used by the face detectors.
OPS = {0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
       17: "MAX_POOL_2D", 19: "RELU", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 34: "PAD"}
# TensorType → numpy dtype.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}
PADDINGS = {0: "SAME", 1: "VALID"}


class Table:
  """One flatbuffer table: fields read by their index in the schema."""

  def __init__(self, buf: bytes, pos: int):
    self.buf, self.pos = buf, pos
    self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
    self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

  def _field(self, i: int) -> int:
    entry = 4 + 2 * i
    if entry >= self.vsize:
      return 0
    off = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
    return self.pos + off if off else 0

  def scalar(self, i: int, fmt: str, default=0):
    at = self._field(i)
    return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

  def _ref(self, at: int) -> int:
    return at + struct.unpack_from("<I", self.buf, at)[0]

  def table(self, i: int) -> Table | None:
    at = self._field(i)
    return Table(self.buf, self._ref(at)) if at else None

  def _vector(self, i: int) -> tuple[int, int]:
    at = self._field(i)
    if not at:
      return 0, 0
    start = self._ref(at)
    return start + 4, struct.unpack_from("<I", self.buf, start)[0]

  def tables(self, i: int) -> list[Table]:
    start, n = self._vector(i)
    return [Table(self.buf, self._ref(start + 4 * k)) for k in range(n)]

  def array(self, i: int, dtype) -> np.ndarray:
    start, n = self._vector(i)
    return np.frombuffer(self.buf, dtype, n, start).copy() if n else np.zeros((0,), dtype)

  def string(self, i: int) -> str:
    start, n = self._vector(i)
    return self.buf[start:start + n].decode("utf-8") if n else ""


@dataclasses.dataclass
class Tensor:
  name: str
  shape: tuple[int, ...]
  dtype: Any
  data: np.ndarray | None  # the constant's value, else None (an activation)


@dataclasses.dataclass
class Operator:
  op: str
  inputs: list[int]
  outputs: list[int]
  options: dict[str, Any]


@dataclasses.dataclass
class Graph:
  tensors: list[Tensor]
  operators: list[Operator]
  inputs: list[int]
  outputs: list[int]


def _options(op: str, t: Table | None) -> dict[str, Any]:
  """The builtin options table of one operator, as a dict (schema defaults where absent)."""
  if t is None:
    return {}
  if op == "CONV_2D":
    return dict(padding=PADDINGS[t.scalar(0, "b")], stride=(t.scalar(2, "i"), t.scalar(1, "i")),
                activation=ACTIVATIONS[t.scalar(3, "b")],
                dilation=(t.scalar(5, "i", 1), t.scalar(4, "i", 1)))
  if op == "DEPTHWISE_CONV_2D":
    return dict(padding=PADDINGS[t.scalar(0, "b")], stride=(t.scalar(2, "i"), t.scalar(1, "i")),
                depth_multiplier=t.scalar(3, "i"), activation=ACTIVATIONS[t.scalar(4, "b")],
                dilation=(t.scalar(6, "i", 1), t.scalar(5, "i", 1)))
  if op == "MAX_POOL_2D":
    return dict(padding=PADDINGS[t.scalar(0, "b")], stride=(t.scalar(2, "i"), t.scalar(1, "i")),
                window=(t.scalar(4, "i"), t.scalar(3, "i")), activation=ACTIVATIONS[t.scalar(5, "b")])
  if op == "ADD":
    return dict(activation=ACTIVATIONS[t.scalar(0, "b")])
  if op == "CONCATENATION":
    return dict(axis=t.scalar(0, "i"), activation=ACTIVATIONS[t.scalar(1, "b")])
  if op == "RESIZE_BILINEAR":
    return dict(align_corners=bool(t.scalar(2, "B")), half_pixel_centers=bool(t.scalar(3, "B")))
  return {}


def parse(data: bytes) -> Graph:
  """TFLite model bytes → the first subgraph's tensors (with constants) and operators."""
  if len(data) < 8 or data[4:8] != b"TFL3":
    raise ValueError("not a TFLite model (no TFL3 identifier)")
  model = Table(data, struct.unpack_from("<I", data, 0)[0])
  codes = []
  for c in model.tables(1):  # builtin_code (int32) supersedes the deprecated int8 one
    codes.append(max(c.scalar(0, "b"), c.scalar(3, "i")))
  buffers = model.tables(4)
  graph = model.tables(2)[0]
  tensors = []
  for t in graph.tables(0):
    dtype = DTYPES.get(t.scalar(1, "b"), None)
    shape = tuple(int(s) for s in t.array(0, np.int32))
    b = t.scalar(2, "I")
    raw = buffers[b].array(0, np.uint8) if b < len(buffers) else np.zeros((0,), np.uint8)
    value = raw.view(dtype).reshape(shape) if raw.size and dtype is not None else None
    tensors.append(Tensor(t.string(3), shape, dtype, value))
  operators = []
  for o in graph.tables(3):
    code = codes[o.scalar(0, "I")]
    if code not in OPS:
      raise ValueError(f"unsupported TFLite operator code {code}")
    op = OPS[code]
    operators.append(Operator(op, [int(i) for i in o.array(1, np.int32)],
                              [int(i) for i in o.array(2, np.int32)], _options(op, o.table(4))))
  return Graph(tensors, operators, [int(i) for i in graph.array(1, np.int32)],
               [int(i) for i in graph.array(2, np.int32)])


def read_model_bytes(path: str, name: str | None = None) -> dict[str, bytes]:
  """A .tflite file, or a wheel/zip holding .tflite files → {file name: model bytes}.

  With `name`, only that member of a wheel is returned.
  """
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      return {os.path.basename(m): z.read(m) for m in z.namelist()
              if m.endswith(".tflite") and (name is None or os.path.basename(m) == name)}
  with open(path, "rb") as f:
    return {os.path.basename(path): f.read()}
