"""GetPreferredAllocation's messages with device IDs as ``bytes``: the same wire format.

A GetPreferredAllocation request offers every free device of the resource, 896 IDs
on a node of 8 GPUs with 112 replicas each, and fatia must read all of them (the
echo server a benchmark compares it with reads none). With the generated classes
each ID becomes a ``str``: decoded and checked as UTF-8 one by one, then hashed.
As ``bytes`` an ID is a plain copy, and reading the request costs half as much.

Protobuf encodes ``string`` and ``bytes`` fields alike (length-delimited), so
messages whose ID fields are ``bytes`` read and write exactly the kubelet's wire
format. They are derived here from the generated descriptors, the field numbers
and names copied, only ``string`` turned into ``bytes``, so that the two cannot
drift apart; a test round-trips both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from deviceplugin.api.v1beta1 import api_pb2

_PACKAGE = "fatia.wire.v1beta1"
_MESSAGES = (
    api_pb2.PreferredAllocationRequest,
    api_pb2.ContainerPreferredAllocationRequest,
    api_pb2.PreferredAllocationResponse,
    api_pb2.ContainerPreferredAllocationResponse,
)
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES


def _build() -> dict[str, Any]:
    source = api_pb2.DESCRIPTOR.package
    file = descriptor_pb2.FileDescriptorProto(name="fatia/wire.proto", package=_PACKAGE, syntax="proto3")
    for message in _MESSAGES:
        proto = file.message_type.add()
        message.DESCRIPTOR.CopyToProto(proto)
        for field in proto.field:
            if field.type == _STRING:
                field.type = _BYTES
            elif field.type_name:
                field.type_name = field.type_name.replace(f".{source}.", f".{_PACKAGE}.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        m.DESCRIPTOR.name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{_PACKAGE}.{m.DESCRIPTOR.name}")
        )
        for m in _MESSAGES
    }


if TYPE_CHECKING:  # the same attributes as the generated classes, with bytes for str
    PreferredAllocationRequest = Any
    PreferredAllocationResponse = Any
else:
    _CLASSES = _build()
    PreferredAllocationRequest = _CLASSES["PreferredAllocationRequest"]
    PreferredAllocationResponse = _CLASSES["PreferredAllocationResponse"]
