"""The offer reader in C reads a GetPreferredAllocation container request as protobuf does.

:mod:`deviceplugin.kubelet._offer` reads the kubelet's serialized
``ContainerPreferredAllocationRequest`` into one flag per device slot, the offered
count per unit, the must-include slots and the allocation size. Its reference is
protobuf's own reading of the message followed by ``ResourceIndex._read_offer``, and it
is held to it:

- on valid requests of every shape (unknown and repeated IDs, must-include IDs, fields
  it does not know in every wire type, IDs long enough for a two-byte length, sizes
  negative and past 32 bits) both read the same, and so do the preferences built on
  what they read;
- on broken bytes (every truncation of a request, corrupted bytes, random bytes) the C
  reader either declines (``None``, and protobuf reads the request instead) or reads
  exactly what protobuf reads: it never accepts what protobuf refuses.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.config.schema import AllocationPolicy, PluginOptions
from deviceplugin.kubelet import wire
from deviceplugin.kubelet._offer import OfferTable
from deviceplugin.kubelet.allocation import ResourceIndex
from deviceplugin.plan.resources import Device, Resource

GPU = "nvidia.com/gpu"
Read = tuple[bytes, list[int], list[int], int]
# A fixed seed and no example database, as in tests/fuzz: the same cases on every run.
FIXED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def resource(replicas: list[int], *, uuid_length: int = 8, packed: bool = False) -> Resource:
    """Replicas of one GPU per entry (1: the GPU itself), with UUIDs of a given length."""
    devices = []
    for g, count in enumerate(replicas):
        uuid = f"GPU-{g:0{uuid_length}d}"
        if count == 1:
            devices.append(Device(id=uuid, uuid=uuid, gpu=g))
        else:
            devices += [Device(id=f"{uuid}::{n}", uuid=uuid, gpu=g, replica=n) for n in range(count)]
    policy = AllocationPolicy.PACKED if packed else AllocationPolicy.DISTRIBUTED
    return Resource(name=GPU, devices=tuple(devices), options=PluginOptions(allocation_policy=policy))


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """One field on the wire: the tag, then a varint, 8 or 4 bytes, or a length and bytes."""
    tag = varint(number << 3 | wire_type)
    if wire_type == 0:
        assert isinstance(payload, int)
        return tag + varint(payload)
    assert isinstance(payload, bytes)
    if wire_type == 2:
        return tag + varint(len(payload)) + payload
    return tag + payload


def protobuf_read(index: ResourceIndex, request: bytes) -> Read | None:
    """The reference: protobuf reads the message, then ``_read_offer`` reads the IDs."""
    try:
        parsed = wire.ContainerPreferredAllocationRequest.FromString(request)
    except DecodeError:
        return None
    flags, counts, must = index._read_offer(parsed.available_deviceIDs, parsed.must_include_deviceIDs)
    return flags, counts, must, parsed.allocation_size


def c_read(index: ResourceIndex, request: bytes) -> Read | None:
    assert index._offers is not None
    return index._offers.read(request)


# -- requests of every valid shape ---------------------------------------------------------------

R = resource([3, 1, 130, 2], uuid_length=120)  # IDs of 124-129 bytes: one- and two-byte lengths
KNOWN = [d.id.encode() for d in R.devices]
UNKNOWN = [b"", b"GPU-nope", KNOWN[0] + b"x", KNOWN[0][:-1], b"\xff\xfe"]
INDEX = ResourceIndex(R)
ids = st.lists(st.sampled_from(KNOWN + UNKNOWN), max_size=40)
unknown_fields = st.lists(
    st.one_of(
        st.builds(field, st.integers(4, 2**29 - 1), st.just(0), st.integers(0, 2**64 - 1)),
        st.builds(field, st.integers(4, 2**29 - 1), st.just(1), st.binary(min_size=8, max_size=8)),
        st.builds(field, st.integers(4, 2**29 - 1), st.just(2), st.binary(max_size=300)),
        st.builds(field, st.integers(4, 2**29 - 1), st.just(5), st.binary(min_size=4, max_size=4)),
        # Known numbers in the wrong wire type: protobuf keeps them as unknown fields.
        st.builds(field, st.sampled_from([1, 2]), st.just(0), st.integers(0, 2**64 - 1)),
        st.builds(field, st.just(3), st.just(2), st.binary(max_size=10)),
        st.builds(field, st.just(3), st.just(5), st.binary(min_size=4, max_size=4)),
    ),
    max_size=6,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid request: its fields in any order, sizes anywhere in 64 bits, foreign fields mixed in."""
    parts = [field(1, 2, i) for i in draw(ids)]
    parts += [field(2, 2, i) for i in draw(st.lists(st.sampled_from(KNOWN + UNKNOWN), max_size=4))]
    parts += [field(3, 0, s) for s in draw(st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2))]
    parts += draw(unknown_fields)
    return b"".join(draw(st.permutations(parts)))


@FIXED
@given(requests())
def test_a_valid_request_reads_as_protobuf_reads_it(request: bytes) -> None:
    assert c_read(INDEX, request) == protobuf_read(INDEX, request) is not None


@FIXED
@given(requests(), st.booleans())
def test_both_readers_give_the_same_preference(request: bytes, packed: bool) -> None:
    r = resource([3, 1, 130, 2], uuid_length=120, packed=packed)

    accelerated = ResourceIndex(r).preferred_wire(request)

    assert accelerated == ResourceIndex(r, accelerated=False).preferred_wire(request)


def test_a_kubelet_request_of_896_replicas_reads_alike() -> None:
    r = resource([112] * 8)
    offered = [d.id for d in r.devices if d.replica != 5]
    request = api_pb2.ContainerPreferredAllocationRequest(
        available_deviceIDs=offered[::-1], must_include_deviceIDs=[offered[7]], allocation_size=4
    ).SerializeToString()
    index = ResourceIndex(r)

    read = c_read(index, request)

    assert read == protobuf_read(index, request)
    assert read is not None
    flags, counts, must, size = read
    assert (sum(flags), counts, size) == (888, [111] * 8, 4)
    assert [index._ids[slot] for slot in must] == [offered[7].encode()]


# -- broken bytes --------------------------------------------------------------------------------


def assert_never_accepts_more(request: bytes) -> None:
    read = c_read(INDEX, request)
    if read is not None:
        assert read == protobuf_read(INDEX, request)


@settings(FIXED, max_examples=40)
@given(requests())
def test_every_truncation_is_declined_or_read_as_protobuf_reads_it(request: bytes) -> None:
    for end in range(len(request)):
        assert_never_accepts_more(request[:end])


@FIXED
@given(requests(), st.data())
def test_corrupted_requests_are_declined_or_read_as_protobuf_reads_them(
    request: bytes, data: st.DataObject
) -> None:
    broken = bytearray(request + b"\x00")
    for _ in range(data.draw(st.integers(1, 4))):
        broken[data.draw(st.integers(0, len(broken) - 1))] = data.draw(st.integers(0, 255))

    assert_never_accepts_more(bytes(broken))


@settings(FIXED, max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_are_declined_or_read_as_protobuf_reads_them(junk: bytes) -> None:
    assert_never_accepts_more(junk)


@pytest.mark.parametrize(
    "request_bytes",
    [
        field(9, 3, b"") + field(9, 4, b""),  # a group: protobuf skips it, the reader declines
        b"\x0a\x05ab",  # a length past the end
        b"\x18" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x18" + b"\xff" * 9 + b"\x02",  # a 10-byte varint beyond 64 bits
        varint(0 << 3 | 2) + b"\x00",  # field number 0
        varint(1 << 32),  # a tag beyond 32 bits
        b"\x0f",  # wire type 7
    ],
)
def test_what_the_reader_does_not_read_exactly_it_declines(request_bytes: bytes) -> None:
    assert c_read(INDEX, request_bytes) is None


def test_a_declined_request_is_answered_through_protobuf() -> None:
    r = resource([2, 2])
    group = field(9, 3, b"") + field(9, 4, b"")
    request = group + field(1, 2, b"GPU-00000001::1") + field(3, 0, 1)

    assert ResourceIndex(r).preferred_wire(request) == [b"GPU-00000001::1"]


def test_a_request_that_is_no_message_is_refused_by_protobuf() -> None:
    with pytest.raises(DecodeError):
        ResourceIndex(resource([2])).preferred_wire(b"\x0a\x05ab")


# -- the table -----------------------------------------------------------------------------------


def test_a_table_refuses_what_it_cannot_index() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        OfferTable([b"a", b"b", b"a"], [0, 0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        OfferTable([b"a"], [0, 1])
    with pytest.raises(ValueError, match="negative"):
        OfferTable([b"a"], [-1])
    with pytest.raises(TypeError, match="bytes"):
        OfferTable(["a"], [0])  # type: ignore[list-item]


def test_a_table_that_failed_to_build_refuses_to_read() -> None:
    table = OfferTable.__new__(OfferTable)
    with pytest.raises(TypeError, match="not initialised"):
        table.read(b"")
    with pytest.raises(ValueError, match="listed twice"):
        OfferTable.__init__(table, [b"a", b"b", b"a"], [0, 0, 0])

    with pytest.raises(TypeError, match="not initialised"):
        table.read(field(1, 2, b"a"))
    OfferTable.__init__(table, [b"a"], [0])
    assert table.read(field(1, 2, b"a")) == (b"\x01", [1], [], 0)
    with pytest.raises(TypeError, match="already initialised"):
        OfferTable.__init__(table, [b"b"], [0])


def test_an_empty_table_reads_an_offer_of_nothing_it_knows() -> None:
    table = OfferTable([], [])

    assert len(table) == 0
    assert table.read(field(1, 2, b"GPU-0") + field(3, 0, 2)) == (b"", [], [], 2)


def test_ids_that_share_all_but_their_last_byte_are_told_apart() -> None:
    names = [b"GPU-0000-0000::%d" % n for n in range(300)]
    table = OfferTable(names, [n % 3 for n in range(300)])

    read = table.read(b"".join(field(1, 2, names[n]) for n in range(0, 300, 7)))

    assert read is not None
    flags, counts, _, _ = read
    assert [n for n, flag in enumerate(flags) if flag] == list(range(0, 300, 7))
    assert counts == [sum(1 for n in range(0, 300, 7) if n % 3 == u) for u in range(3)]
