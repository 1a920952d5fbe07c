"""The tf.Example message, built from its schema at import: records parse without TensorFlow.

The prepared records are serialized `tensorflow.Example`s. Reading them through TFDS's or
TensorFlow's generated module would make every training host install one of them only to
parse six fields; protobuf alone (which JAX's hosts have) parses the same bytes from this
copy of `tensorflow/core/example/{example,feature}.proto`. It lives in a pool of its own, so
it never collides with TensorFlow's registration of the same names in one process.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "gender_jax.tfexample"


def _field(name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL,
           type_name: str = "", oneof: int | None = None, packed: bool = False):
  f = _F(name=name, number=number, type=kind, label=label)
  if type_name:
    f.type_name = f".{_PACKAGE}.{type_name}"
  if oneof is not None:
    f.oneof_index = oneof
  if packed:
    f.options.packed = True
  return f


def _file() -> descriptor_pb2.FileDescriptorProto:
  fdp = descriptor_pb2.FileDescriptorProto(name="gender_jax/tfexample.proto", package=_PACKAGE,
                                           syntax="proto3")
  repeated = _F.LABEL_REPEATED
  fdp.message_type.add(name="BytesList").field.append(
      _field("value", 1, _F.TYPE_BYTES, repeated))
  fdp.message_type.add(name="FloatList").field.append(
      _field("value", 1, _F.TYPE_FLOAT, repeated, packed=True))
  fdp.message_type.add(name="Int64List").field.append(
      _field("value", 1, _F.TYPE_INT64, repeated, packed=True))
  feature = fdp.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  feature.field.extend([
      _field("bytes_list", 1, _F.TYPE_MESSAGE, type_name="BytesList", oneof=0),
      _field("float_list", 2, _F.TYPE_MESSAGE, type_name="FloatList", oneof=0),
      _field("int64_list", 3, _F.TYPE_MESSAGE, type_name="Int64List", oneof=0)])
  features = fdp.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")  # map<string, Feature>
  entry.options.map_entry = True
  entry.field.extend([_field("key", 1, _F.TYPE_STRING),
                      _field("value", 2, _F.TYPE_MESSAGE, type_name="Feature")])
  features.field.append(_field("feature", 1, _F.TYPE_MESSAGE, repeated,
                               type_name="Features.FeatureEntry"))
  fdp.message_type.add(name="Example").field.append(
      _field("features", 1, _F.TYPE_MESSAGE, type_name="Features"))
  return fdp


def _message_class(pool, name: str):
  from google.protobuf import message_factory
  descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")
  if hasattr(message_factory, "GetMessageClass"):  # protobuf ≥ 4.22
    return message_factory.GetMessageClass(descriptor)
  return message_factory.MessageFactory(pool).GetPrototype(descriptor)


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Example = _message_class(_POOL, "Example")
