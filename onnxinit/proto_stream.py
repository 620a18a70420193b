"""Write a ModelProto to a file one initializer at a time, with the bytes SerializeToString gives.

model.SerializeToString() builds the whole file in one buffer (a second copy of every
weight, 100 MB for a ResNet-50) before a byte is written. Protobuf's wire format is
    field = varint(number << 3 | 2) varint(length) payload      (length-delimited fields)
and a message is its set fields in field-number order, so the model's bytes are
    model fields before `graph` | graph's tag and length | graph fields before `initializer`
    | each initializer's tag, length and bytes | graph fields after | model fields after,
where each small part is serialized by protobuf itself and each tensor on its own. The
lengths come from ByteSize(), which serializes nothing.
"""
from __future__ import annotations

import onnx

LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """Protobuf base-128 varint: 7 bits per byte, low bits first, high bit = more follows."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def _tag(message_type, field_name: str) -> tuple[int, bytes]:
    number = message_type.DESCRIPTOR.fields_by_name[field_name].number
    return number, varint(number << 3 | LENGTH_DELIMITED)


def _fields(message, keep) -> bytes:
    """Serialized bytes of the set fields of ``message`` whose numbers pass ``keep``."""
    part = type(message)()
    for field, value in message.ListFields():
        if not keep(field.number):
            continue
        if field.is_repeated:
            getattr(part, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(part, field.name).CopyFrom(value)
        else:
            setattr(part, field.name, value)
    return part.SerializeToString()


def _has_unknown_fields(*messages) -> bool:
    from google.protobuf import unknown_fields
    return any(len(unknown_fields.UnknownFieldSet(m)) for m in messages)


def write_model(model: onnx.ModelProto, out) -> None:
    """Write ``model``'s serialized bytes to the binary file ``out``, holding at most one
    tensor's bytes at a time beyond the model itself."""
    graph = model.graph
    if not model.HasField("graph") or _has_unknown_fields(model, graph):
        out.write(model.SerializeToString())   # fields this onnx does not know: keep them as they are
        return
    graph_number, graph_tag = _tag(onnx.ModelProto, "graph")
    init_number, init_tag = _tag(onnx.GraphProto, "initializer")
    graph_head = _fields(graph, lambda n: n < init_number)
    graph_tail = _fields(graph, lambda n: n > init_number)
    sizes = [tensor.ByteSize() for tensor in graph.initializer]
    graph_size = len(graph_head) + len(graph_tail) + sum(len(init_tag) + len(varint(s)) + s for s in sizes)
    out.write(_fields(model, lambda n: n < graph_number))
    out.write(graph_tag + varint(graph_size))
    out.write(graph_head)
    for tensor, size in zip(graph.initializer, sizes):
        out.write(init_tag + varint(size))
        out.write(tensor.SerializeToString())
    out.write(graph_tail)
    out.write(_fields(model, lambda n: n > graph_number))
