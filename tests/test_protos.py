"""The generated kubelet API code is current and speaks the kubelet's wire format.

The expected tables are copied from the kubelet contract reference (§1.2, §1.3,
§2.1, §2.2), not from the .proto files, so an edited proto fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from deviceplugin.api import codegen
from deviceplugin.api.podresources.v1 import api_pb2 as podresources
from deviceplugin.api.v1beta1 import api_pb2 as deviceplugin

REPO = Path(__file__).resolve().parents[1]

# service -> method -> (request message, response message, server streaming)
Services = dict[str, dict[str, tuple[str, str, bool]]]

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _type(field: FieldDescriptor) -> str:
    """A field's type the way the reference writes it: ``repeated Device``, ``map<string,string>``."""
    base: str  # protobuf's descriptors are untyped: ``entry.name`` is Any
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key, value = (_type(entry.fields_by_name[n]) for n in ("key", "value"))
            return f"map<{key},{value}>"
        base = entry.name
    else:
        base = _SCALARS[field.type]
    if field.is_repeated:
        return f"repeated {base}"
    if field.containing_oneof is not None and field.has_presence:  # proto3 `optional`
        return f"optional {base}"
    return base


def _fields(message: Descriptor) -> list[tuple[int, str, str]]:
    return sorted((f.number, f.name, _type(f)) for f in message.fields)


def _messages(file: FileDescriptor) -> dict[str, list[tuple[int, str, str]]]:
    return {name: _fields(message) for name, message in file.message_types_by_name.items()}


# -- generated code is current ------------------------------------------------------


def test_regenerating_gives_the_checked_in_files(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    for generated in codegen.GENERATED:
        fresh = (tmp_path / generated).read_bytes()
        assert fresh == (REPO / generated).read_bytes(), f"{generated} is stale: run `make proto`"


def test_codegen_lists_every_checked_in_generated_file() -> None:
    on_disk = {
        str(p.relative_to(REPO))
        for p in (REPO / "deviceplugin/api").rglob("api_pb2*")
        if p.suffix in (".py", ".pyi")  # not the bytecode caches
    }
    assert on_disk == set(codegen.GENERATED)


# -- both protos in one process ------------------------------------------------------


@pytest.mark.parametrize("order", [("v1beta1", "podresources.v1"), ("podresources.v1", "v1beta1")])
def test_both_protos_import_into_one_descriptor_pool(order: tuple[str, str]) -> None:
    imports = "; ".join(f"import deviceplugin.api.{m}.api_pb2_grpc" for m in order)
    subprocess.run([sys.executable, "-c", imports], cwd=REPO, check=True, timeout=60)


def test_each_proto_defines_its_own_topology_info() -> None:
    assert deviceplugin.TopologyInfo.DESCRIPTOR.full_name == "v1beta1.TopologyInfo"
    assert podresources.TopologyInfo.DESCRIPTOR.full_name == "v1.TopologyInfo"
    assert deviceplugin.TopologyInfo is not podresources.TopologyInfo
    assert deviceplugin.DESCRIPTOR.name != podresources.DESCRIPTOR.name
    device = deviceplugin.Device(ID="GPU-1")
    device.topology.nodes.add(ID=1)
    assert device.topology.nodes[0].ID == 1


# -- wire contract -------------------------------------------------------------------

DEVICE_PLUGIN_SERVICES = {
    "v1beta1.Registration": {"Register": ("RegisterRequest", "Empty", False)},
    "v1beta1.DevicePlugin": {
        "GetDevicePluginOptions": ("Empty", "DevicePluginOptions", False),
        "ListAndWatch": ("Empty", "ListAndWatchResponse", True),
        "GetPreferredAllocation": ("PreferredAllocationRequest", "PreferredAllocationResponse", False),
        "Allocate": ("AllocateRequest", "AllocateResponse", False),
        "PreStartContainer": ("PreStartContainerRequest", "PreStartContainerResponse", False),
    },
}

DEVICE_PLUGIN_MESSAGES = {
    "RegisterRequest": [
        (1, "version", "string"),
        (2, "endpoint", "string"),
        (3, "resource_name", "string"),
        (4, "options", "DevicePluginOptions"),
    ],
    "DevicePluginOptions": [
        (1, "pre_start_required", "bool"),
        (2, "get_preferred_allocation_available", "bool"),
    ],
    "Empty": [],
    "ListAndWatchResponse": [(1, "devices", "repeated Device")],
    "Device": [(1, "ID", "string"), (2, "health", "string"), (3, "topology", "TopologyInfo")],
    "TopologyInfo": [(1, "nodes", "repeated NUMANode")],
    "NUMANode": [(1, "ID", "int64")],
    "PreStartContainerRequest": [(1, "devices_ids", "repeated string")],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [(1, "container_requests", "repeated ContainerPreferredAllocationRequest")],
    "ContainerPreferredAllocationRequest": [
        (1, "available_deviceIDs", "repeated string"),
        (2, "must_include_deviceIDs", "repeated string"),
        (3, "allocation_size", "int32"),
    ],
    "PreferredAllocationResponse": [
        (1, "container_responses", "repeated ContainerPreferredAllocationResponse")
    ],
    "ContainerPreferredAllocationResponse": [(1, "deviceIDs", "repeated string")],
    "AllocateRequest": [(1, "container_requests", "repeated ContainerAllocateRequest")],
    "ContainerAllocateRequest": [(1, "devices_ids", "repeated string")],
    "AllocateResponse": [(1, "container_responses", "repeated ContainerAllocateResponse")],
    "ContainerAllocateResponse": [
        (1, "envs", "map<string,string>"),
        (2, "mounts", "repeated Mount"),
        (3, "devices", "repeated DeviceSpec"),
        (4, "annotations", "map<string,string>"),
        (5, "cdi_devices", "repeated CDIDevice"),
    ],
    "CDIDevice": [(1, "name", "string")],
    "Mount": [(1, "container_path", "string"), (2, "host_path", "string"), (3, "read_only", "bool")],
    "DeviceSpec": [(1, "container_path", "string"), (2, "host_path", "string"), (3, "permissions", "string")],
}

POD_RESOURCES_SERVICES = {
    "v1.PodResourcesLister": {
        "List": ("ListPodResourcesRequest", "ListPodResourcesResponse", False),
        "GetAllocatableResources": ("AllocatableResourcesRequest", "AllocatableResourcesResponse", False),
        "Get": ("GetPodResourcesRequest", "GetPodResourcesResponse", False),
    },
}

# PodResources fields 4 and 5 (cpu_ids, memory) are post-1.37 and deliberately absent.
POD_RESOURCES_MESSAGES = {
    "ListPodResourcesRequest": [],
    "ListPodResourcesResponse": [(1, "pod_resources", "repeated PodResources")],
    "PodResources": [
        (1, "name", "string"),
        (2, "namespace", "string"),
        (3, "containers", "repeated ContainerResources"),
    ],
    "ContainerResources": [
        (1, "name", "string"),
        (2, "devices", "repeated ContainerDevices"),
        (3, "cpu_ids", "repeated int64"),
        (4, "memory", "repeated ContainerMemory"),
        (5, "dynamic_resources", "repeated DynamicResource"),
    ],
    "ContainerDevices": [
        (1, "resource_name", "string"),
        (2, "device_ids", "repeated string"),
        (3, "topology", "TopologyInfo"),
    ],
    "ContainerMemory": [(1, "memory_type", "string"), (2, "size", "uint64"), (3, "topology", "TopologyInfo")],
    "TopologyInfo": [(1, "nodes", "repeated NUMANode")],
    "NUMANode": [(1, "ID", "int64")],
    "AllocatableResourcesRequest": [],
    "AllocatableResourcesResponse": [
        (1, "devices", "repeated ContainerDevices"),
        (2, "cpu_ids", "repeated int64"),
        (3, "memory", "repeated ContainerMemory"),
    ],
    "GetPodResourcesRequest": [(1, "pod_name", "string"), (2, "pod_namespace", "string")],
    "GetPodResourcesResponse": [(1, "pod_resources", "PodResources")],
    "DynamicResource": [
        (2, "claim_name", "string"),
        (3, "claim_namespace", "string"),
        (4, "claim_resources", "repeated ClaimResource"),
    ],
    "ClaimResource": [
        (1, "cdi_devices", "repeated CDIDevice"),
        (2, "driver_name", "string"),
        (3, "pool_name", "string"),
        (4, "device_name", "string"),
        (5, "share_id", "optional string"),
    ],
    "CDIDevice": [(1, "name", "string")],
}


def _services(file: FileDescriptor) -> Services:
    return {
        service.full_name: {
            method.name: (method.input_type.name, method.output_type.name, method.server_streaming)
            for method in service.methods
        }
        for service in file.services_by_name.values()
    }


@pytest.mark.parametrize(
    ("module", "package", "services", "messages"),
    [
        (deviceplugin, "v1beta1", DEVICE_PLUGIN_SERVICES, DEVICE_PLUGIN_MESSAGES),
        (podresources, "v1", POD_RESOURCES_SERVICES, POD_RESOURCES_MESSAGES),
    ],
    ids=["deviceplugin-v1beta1", "podresources-v1"],
)
def test_wire_contract(
    module: ModuleType, package: str, services: Services, messages: dict[str, list[tuple[int, str, str]]]
) -> None:
    file: FileDescriptor = module.DESCRIPTOR
    assert file.package == package
    assert _services(file) == services
    assert _messages(file) == messages
    assert not any(m.client_streaming for s in file.services_by_name.values() for m in s.methods)


def test_removed_dynamic_resource_field_number_stays_reserved() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    podresources.DESCRIPTOR.CopyToProto(proto)
    (dynamic,) = (m for m in proto.message_type if m.name == "DynamicResource")
    assert [(r.start, r.end) for r in dynamic.reserved_range] == [(1, 2)]


@pytest.mark.parametrize(
    ("generated", "services"),
    [
        ("deviceplugin/api/v1beta1/api_pb2_grpc.py", DEVICE_PLUGIN_SERVICES),
        ("deviceplugin/api/podresources/v1/api_pb2_grpc.py", POD_RESOURCES_SERVICES),
    ],
    ids=["deviceplugin-v1beta1", "podresources-v1"],
)
def test_grpc_stubs_call_the_kubelet_method_paths(generated: str, services: Services) -> None:
    source = (REPO / generated).read_text()
    for service, methods in services.items():
        for method in methods:
            assert f"'/{service}/{method}'" in source


# -- DRA mode: the kubelet's DRA plugin, plugin-watcher registration and health APIs ------
#
# Field numbers and names as k8s.io/kubelet v0.37.2 declares them (pkg/apis/dra/v1,
# pkg/apis/pluginregistration/v1, pkg/apis/dra-health/v1).

DRA_SERVICES = {
    "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin": {
        "NodePrepareResources": ("NodePrepareResourcesRequest", "NodePrepareResourcesResponse", False),
        "NodeUnprepareResources": ("NodeUnprepareResourcesRequest", "NodeUnprepareResourcesResponse", False),
    },
}
DRA_MESSAGES = {
    "NodePrepareResourcesRequest": [(1, "claims", "repeated Claim")],
    "NodePrepareResourcesResponse": [(1, "claims", "map<string,NodePrepareResourceResponse>")],
    "NodePrepareResourceResponse": [(1, "devices", "repeated Device"), (2, "error", "string")],
    "Device": [
        (1, "request_names", "repeated string"),
        (2, "pool_name", "string"),
        (3, "device_name", "string"),
        (4, "cdi_device_ids", "repeated string"),
        (5, "share_id", "optional string"),
    ],
    "NodeUnprepareResourcesRequest": [(1, "claims", "repeated Claim")],
    "NodeUnprepareResourcesResponse": [(1, "claims", "map<string,NodeUnprepareResourceResponse>")],
    "NodeUnprepareResourceResponse": [(1, "error", "string")],
    "Claim": [(1, "namespace", "string"), (2, "uid", "string"), (3, "name", "string")],
}
REGISTRATION_SERVICES = {
    "pluginregistration.Registration": {
        "GetInfo": ("InfoRequest", "PluginInfo", False),
        "NotifyRegistrationStatus": ("RegistrationStatus", "RegistrationStatusResponse", False),
    },
}
REGISTRATION_MESSAGES = {
    "PluginInfo": [
        (1, "type", "string"),
        (2, "name", "string"),
        (3, "endpoint", "string"),
        (4, "supported_versions", "repeated string"),
    ],
    "RegistrationStatus": [(1, "plugin_registered", "bool"), (2, "error", "string")],
    "RegistrationStatusResponse": [],
    "InfoRequest": [],
}
HEALTH_SERVICES = {
    "v1.DRAResourceHealth": {
        "NodeWatchResources": ("NodeWatchResourcesRequest", "NodeWatchResourcesResponse", True),
    },
}
HEALTH_MESSAGES = {
    "NodeWatchResourcesRequest": [],
    "DeviceIdentifier": [(1, "pool_name", "string"), (2, "device_name", "string")],
    "DeviceHealth": [
        (1, "device", "DeviceIdentifier"),
        (2, "health", "HealthStatus"),
        (3, "last_updated_time", "int64"),
        (4, "health_check_timeout_seconds", "int64"),
        (5, "message", "string"),
    ],
    "NodeWatchResourcesResponse": [(1, "devices", "repeated DeviceHealth")],
}


def _dra_type(field: FieldDescriptor) -> str:
    """As :func:`_type`, plus enums and maps of messages."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return str(field.enum_type.name)
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        entry = field.message_type
        return f"map<{_type(entry.fields_by_name['key'])},{entry.fields_by_name['value'].message_type.name}>"
    return _type(field)


def _dra_messages(file: FileDescriptor) -> dict[str, list[tuple[int, str, str]]]:
    return {
        name: sorted((f.number, f.name, _dra_type(f)) for f in message.fields)
        for name, message in file.message_types_by_name.items()
    }


@pytest.mark.parametrize(
    ("module", "package", "services", "messages"),
    [
        ("dra.v1", "k8s.io.kubelet.pkg.apis.dra.v1", DRA_SERVICES, DRA_MESSAGES),
        ("pluginregistration.v1", "pluginregistration", REGISTRATION_SERVICES, REGISTRATION_MESSAGES),
        ("drahealth.v1", "v1", HEALTH_SERVICES, HEALTH_MESSAGES),
    ],
    ids=["dra-v1", "pluginregistration-v1", "dra-health-v1"],
)
def test_dra_wire_contract(
    module: str, package: str, services: Services, messages: dict[str, list[tuple[int, str, str]]]
) -> None:
    import importlib

    file: FileDescriptor = importlib.import_module(f"deviceplugin.api.{module}.api_pb2").DESCRIPTOR
    assert file.package == package
    assert _services(file) == services
    assert _dra_messages(file) == messages
    assert not any(m.client_streaming for s in file.services_by_name.values() for m in s.methods)
    source = (REPO / f"deviceplugin/api/{module.replace('.', '/')}/api_pb2_grpc.py").read_text()
    for service, methods in services.items():
        for method in methods:
            assert f"'/{service}/{method}'" in source


def test_health_status_values_are_the_kubelets() -> None:
    from deviceplugin.api.drahealth.v1 import api_pb2 as health

    assert (health.UNKNOWN, health.HEALTHY, health.UNHEALTHY) == (0, 1, 2)


def test_every_kubelet_api_imports_into_one_descriptor_pool() -> None:
    modules = ("v1beta1", "podresources.v1", "dra.v1", "pluginregistration.v1", "drahealth.v1")
    for order in (modules, tuple(reversed(modules))):
        imports = "; ".join(f"import deviceplugin.api.{m}.api_pb2_grpc" for m in order)
        subprocess.run([sys.executable, "-c", imports], cwd=REPO, check=True, timeout=60)
