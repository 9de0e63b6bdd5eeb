"""Every limit fatia puts on its input, in one place, each with the reason for its value.

A config is text a person (or a script) wrote into a ConfigMap; it must never cost the
node more than a bounded amount of time and memory, and never make fatia advertise
something the kubelet cannot take. The limits fall in three groups:

- **reading** (:mod:`deviceplugin.config.yamlload`): size, values, aliases, depth;
- **the schema** (:mod:`deviceplugin.config.schema`): every number finite and within a
  range, every list and name of a bounded length;
- **what is advertised** (:mod:`deviceplugin.plan.node`, with the inventory): no resource
  has more devices than one ListAndWatch message can carry to the kubelet, and the node
  has no more devices in all than the daemon holds comfortably in its memory limit.

The kubelet reads each ListAndWatch message with gRPC's default receive limit, 4 MiB; a
larger one fails with RESOURCE_EXHAUSTED and the kubelet drops the resource while the
plugin believes it is served. :func:`listing_bytes` is the exact size of that message
for ``count`` devices with IDs of ``id_length`` bytes, in the worst case of every other
field (``Unhealthy``, a NUMA node id of ten varint bytes); a test checks it against a
real serialized message at the limit.
"""

from __future__ import annotations

# -- reading ----------------------------------------------------------------------------
MAX_BYTES = 1024 * 1024  # a ConfigMap holds at most 1 MiB of data
# Values in the document, aliases counted as what they stand for. mig-parted's own default
# file (every profile of every GPU model) has about 1,000; 20,000 read in about 0.1 s.
MAX_NODES = 20_000
MAX_ALIASES = 1_000  # anchors are for a handful of shared specs
MAX_DEPTH = 32  # fatia's deepest key (sharing.timeSlicing.resources[0].name) is at depth 5
MAX_NUMBER_CHARS = 64  # every number a config needs is far shorter; 10**400 is not a config

# -- the schema ---------------------------------------------------------------------------
MAX_GPUS = 64  # GPU indices 0..63: the largest nodes have 16 GPUs
MAX_RULES = 64  # rules per config (more rules than GPUs are never needed)
MAX_LIST = 64  # devices per rule, device filters, device-list strategies
MAX_SHARED_RESOURCES = 256  # sharing.timeSlicing.resources: every MIG profile of every model
MAX_MIG_PROFILES = 64  # entries of one rule's mig-devices
MAX_MIG_COUNT = 64  # instances of one profile: a GPU has at most 8 memory slices
MAX_XIDS = 1024  # entries of ignoredXids / fatalXids
MAX_XID = 2**32 - 1  # NVML reports an XID in 32 bits' worth of event data
MAX_NAME = 317  # an extended resource name: a 253-character DNS prefix, "/", 63 characters
MAX_STRING = 256  # product globs, GPU UUIDs (40 characters), NVIDIA's paths and flags
MAX_REPLICAS = 10_000  # time-slicing replicas of one device; see listing_bytes for the node bound
MIN_RECOVERY_S = 0.1  # below the health loop's wake-up granularity a device heals mid-burst
MAX_RECOVERY_S = 86_400.0  # a day: longer is "never", which is what health.enabled: false says
MIN_LIVENESS_S = 1.0  # the liveness read asks NVML about every GPU: not more than once a second
MAX_LIVENESS_S = 3_600.0  # an hour: a lost GPU must not go unnoticed for longer

# -- what is advertised ---------------------------------------------------------------------
KUBELET_MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default receive limit, which the kubelet keeps
LISTING_BUDGET = KUBELET_MAX_MESSAGE * 3 // 4  # a quarter kept in reserve
# Per node, all resources together: a device costs the daemon about 600 bytes (measured
# RSS: the Device, its ID, its ListAndWatch entry, the ID index), so 50,000 devices are
# 30 MB, and even two generations of them during an update stay well inside the
# DaemonSet's 256 MiB. No node needs as many: 8 GPUs x 7 MIG devices x 100 replicas is 5,600.
MAX_NODE_DEVICES = 50_000
# The ID length assumed for a MIG device not created yet (the planner knows no UUID):
# "MIG-GPU-<36-character UUID>/<gi>/<ci>", the longest form drivers have used.
PLANNED_ID_LENGTH = 50
_WORST_HEALTH = len("Unhealthy")
_WORST_NUMA_VARINT = 10  # an int64 NUMA node id, negative or huge: ten varint bytes


def _varint_length(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def _length_delimited(payload: int) -> int:
    """A length-delimited protobuf field of field number < 16: tag, length, payload."""
    return 1 + _varint_length(payload) + payload


def device_entry_bytes(id_length: int) -> int:
    """Bytes one ``Device`` adds to a ``ListAndWatchResponse`` (``repeated Device devices = 1``).

    ``Device{string ID = 1; string health = 2; TopologyInfo topology = 3}``,
    ``TopologyInfo{repeated NUMANode nodes = 1}``, ``NUMANode{int64 ID = 1}``.
    """
    numa_node = 1 + _WORST_NUMA_VARINT
    topology = _length_delimited(_length_delimited(numa_node))
    device = _length_delimited(id_length) + _length_delimited(_WORST_HEALTH) + topology
    return _length_delimited(device)


def listing_bytes(count: int, id_length: int) -> int:
    """The largest ListAndWatch message for ``count`` devices whose IDs have ``id_length`` bytes."""
    return count * device_entry_bytes(id_length)


def max_listed_devices(id_length: int) -> int:
    """How many devices with IDs of ``id_length`` bytes one message carries within the budget."""
    return LISTING_BUDGET // device_entry_bytes(id_length)
