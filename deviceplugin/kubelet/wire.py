"""GetPreferredAllocation's messages as fatia reads them: the same wire format.

A GetPreferredAllocation request offers every free device of the resource, 896 IDs
on a node of 8 GPUs with 112 replicas each, and fatia must read all of them (the
echo server a benchmark compares it with reads none). With the generated classes
each ID becomes a ``str``: decoded and checked as UTF-8 one by one, then hashed.
So the plugin server reads the request with messages of its own:

- :class:`PreferredAllocationRequest` leaves each container's request serialized
  (``container_requests`` as ``bytes``), for the offer reader in C
  (:mod:`deviceplugin.kubelet._offer`) to read in one pass;
- :class:`ContainerPreferredAllocationRequest` reads one of them with IDs as
  ``bytes``, where protobuf must (see :meth:`ResourceIndex.preferred_wire
  <deviceplugin.kubelet.allocation.ResourceIndex.preferred_wire>`);
- :class:`PreferredAllocationResponse` writes the chosen IDs as ``bytes``.

Protobuf encodes ``string``, ``bytes`` and embedded messages alike (length-delimited),
so these read and write exactly the kubelet's wire format. They are derived here from
the generated descriptors, the field numbers and names copied, only the types changed,
so that the two cannot drift apart; a test round-trips both ways.
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
_KEPT_SERIALIZED = {"PreferredAllocationRequest"}  # messages whose embedded messages stay bytes
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES


def _build() -> dict[str, Any]:
    source = api_pb2.DESCRIPTOR.package
    file = descriptor_pb2.FileDescriptorProto(name="fatia/wire.proto", package=_PACKAGE, syntax="proto3")
    for message in _MESSAGES:
        proto = file.message_type.add()
        message.DESCRIPTOR.CopyToProto(proto)
        for field in proto.field:
            if field.type == _STRING or (field.type == _MESSAGE and proto.name in _KEPT_SERIALIZED):
                field.type = _BYTES
                field.ClearField("type_name")
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


if TYPE_CHECKING:  # the generated classes' attributes, with bytes for str (and for requests)
    PreferredAllocationRequest = Any
    ContainerPreferredAllocationRequest = Any
    PreferredAllocationResponse = Any
else:
    _CLASSES = _build()
    PreferredAllocationRequest = _CLASSES["PreferredAllocationRequest"]
    ContainerPreferredAllocationRequest = _CLASSES["ContainerPreferredAllocationRequest"]
    PreferredAllocationResponse = _CLASSES["PreferredAllocationResponse"]
