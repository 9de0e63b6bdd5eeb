"""fatia's GetPreferredAllocation messages speak exactly the kubelet's wire format."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.kubelet import wire

IDS = ["GPU-1::0", "MIG-2", "GPU-\u00e9t\u00e9::1"]  # non-ASCII: bytes are the UTF-8 encoding


def test_a_kubelet_request_reads_as_bytes() -> None:
    request = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=IDS, must_include_deviceIDs=IDS[1:2], allocation_size=2
            ),
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=IDS[:1], allocation_size=1),
        ]
    )

    view = wire.PreferredAllocationRequest.FromString(request.SerializeToString())

    # Each container's request stays serialized, exactly as the kubelet wrote it.
    assert view.container_requests[:] == [r.SerializeToString() for r in request.container_requests]
    first, second = map(wire.ContainerPreferredAllocationRequest.FromString, view.container_requests)
    assert first.available_deviceIDs[:] == [i.encode() for i in IDS]
    assert first.must_include_deviceIDs[:] == [IDS[1].encode()]
    assert (first.allocation_size, second.allocation_size) == (2, 1)
    assert second.available_deviceIDs[:] == [IDS[0].encode()]
    assert view.SerializeToString() == request.SerializeToString()


def test_a_bytes_response_reads_as_the_kubelets() -> None:
    response = wire.PreferredAllocationResponse()
    response.container_responses.add(deviceIDs=[i.encode() for i in IDS])
    response.container_responses.add(deviceIDs=[])

    read = api_pb2.PreferredAllocationResponse.FromString(response.SerializeToString())

    assert [list(r.deviceIDs) for r in read.container_responses] == [IDS, []]


def test_only_string_fields_and_the_requests_containers_change_type() -> None:
    generated = api_pb2.DESCRIPTOR.message_types_by_name
    response = wire.PreferredAllocationResponse.DESCRIPTOR
    derived_messages = (
        wire.PreferredAllocationRequest.DESCRIPTOR,
        wire.ContainerPreferredAllocationRequest.DESCRIPTOR,
        response,
        response.fields[0].message_type,  # the per-container response
    )
    for derived in derived_messages:
        original = generated[derived.name]
        assert [(f.name, f.number, f.is_repeated) for f in derived.fields] == [
            (f.name, f.number, f.is_repeated) for f in original.fields
        ]
        for field in original.fields:
            serialized = field.type == FieldDescriptor.TYPE_STRING or (
                field.type == FieldDescriptor.TYPE_MESSAGE and derived.name == "PreferredAllocationRequest"
            )
            expected = FieldDescriptor.TYPE_BYTES if serialized else field.type
            assert derived.fields_by_name[field.name].type == expected
