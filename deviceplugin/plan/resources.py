"""From GPUs and a config to the resources the kubelet sees.

:func:`build_resources` is a pure function: given the node's inventory and the
config, it returns every resource name with its devices, exactly as fatia will
advertise them. The names and IDs follow NVIDIA's device plugin, so pod specs
and tooling written for it keep working:

- whole GPU: ``nvidia.com/gpu``, ID = GPU UUID;
- MIG device (``migStrategy: mixed``): ``nvidia.com/mig-<profile>`` with ``+``
  written as ``.``, ID = MIG UUID; (``single``): ``nvidia.com/gpu`` (planning
  has checked that every GPU has MIG devices of one profile);
- time-sliced replicas: ID ``<uuid>::<n>``; with ``renameByDefault`` the
  resource is ``<name>.shared``.

A replica count comes from ``sharing.timeSlicing.resources`` (per resource) if
the resource is listed there, else from the GPU's rule (``gpus[].replicas``),
else 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from deviceplugin.config.schema import Config, MigStrategy, PluginOptions
from mig.devicenodes import mig_cap_nodes
from mig.inventory import Gpu, Inventory


class Health(StrEnum):
    """A device's health as the kubelet's v1beta1 API spells it."""

    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


HEALTHY, UNHEALTHY = Health.HEALTHY, Health.UNHEALTHY
RESOURCE_PREFIX = "nvidia.com/"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Device:
    """One advertised device: a GPU, a MIG device, or a replica of either."""

    id: str  # what the kubelet sees
    uuid: str  # the GPU or MIG device behind it
    gpu: int  # index of the physical GPU
    numa_node: int | None = None
    replica: int | None = None  # None when the device is not shared
    mig: tuple[int, int] | None = None  # (GPU instance, compute instance) of a MIG device
    minor: int = 0  # /dev/nvidia<minor> of the physical GPU
    caps: tuple[str, ...] = ()  # MIG capability device nodes (/dev/nvidia-caps/...)
    health: Health = HEALTHY


@dataclass(frozen=True)
class Resource:
    """Everything one device-plugin server needs to answer the kubelet."""

    name: str
    devices: tuple[Device, ...]
    options: PluginOptions = field(default_factory=PluginOptions)
    fail_requests_greater_than_one: bool = False
    # Link score between GPU indices (higher is closer), for whole-GPU preferences.
    topology: Mapping[tuple[int, int], int] = field(default_factory=dict)

    def by_id(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    @cached_property
    def device_totals(self) -> Counter[str]:
        """Advertised devices per underlying UUID (its replica count)."""
        return Counter(d.uuid for d in self.devices)

    @cached_property
    def gpu_totals(self) -> Counter[int]:
        """Advertised devices per physical GPU."""
        return Counter(d.gpu for d in self.devices)


def mig_resource_name(profile: str) -> str:
    return f"{RESOURCE_PREFIX}mig-{profile.replace('+', '.')}"


def build_resources(
    inventory: Inventory,
    config: Config,
    *,
    unhealthy: Collection[str] = (),
    withheld: Collection[str] = (),
    mig_minors: Mapping[str, int] | None = None,
) -> dict[str, Resource]:
    """Every resource to advertise, by name.

    ``unhealthy`` holds UUIDs (GPU or MIG) whose devices are advertised as
    Unhealthy; ``withheld`` holds UUIDs that must not be advertised at all
    (devices about to be destroyed, GPUs in the middle of a MIG mode change).
    ``mig_minors`` is the driver's capability table (for ``passDeviceSpecs``).
    """
    units = [
        unit
        for gpu in inventory.gpus
        if gpu.usable and gpu.uuid not in withheld
        for unit in _units(gpu, config.mig_strategy)
        if unit[1] not in withheld
    ]
    devices: dict[str, list[Device]] = {}
    for base, uuid, gpu, mig in units:
        rule = config.rule_for(
            index=gpu.index, uuid=gpu.uuid, product=gpu.product, pci_device_id=gpu.pci_device_id
        )
        replicas = config.time_slicing.replicas_for(base) or (rule.replicas if rule else None) or 1
        name = f"{base}.shared" if replicas > 1 and config.time_slicing.rename_by_default else base
        health = UNHEALTHY if uuid in unhealthy or gpu.uuid in unhealthy else HEALTHY
        caps = mig_cap_nodes(mig_minors or {}, gpu.minor, *mig) if mig else ()
        common = {
            "uuid": uuid,
            "gpu": gpu.index,
            "numa_node": gpu.numa_node,
            "mig": mig,
            "minor": gpu.minor,
            "caps": caps,
            "health": health,
        }
        found = devices.setdefault(name, [])
        if replicas == 1:
            found.append(Device(id=uuid, **common))  # type: ignore[arg-type]
        else:
            found.extend(
                Device(id=f"{uuid}::{n}", replica=n, **common)  # type: ignore[arg-type]
                for n in range(replicas)
            )
    return {
        name: Resource(
            name=name,
            devices=tuple(found),
            options=config.plugin,
            fail_requests_greater_than_one=config.time_slicing.fail_requests_greater_than_one,
            topology=inventory.topology,
        )
        for name, found in sorted(devices.items())
    }


_Unit = tuple[str, str, Gpu, tuple[int, int] | None]


def _units(gpu: Gpu, strategy: str) -> list[_Unit]:
    """(base resource name, UUID, GPU, MIG ids) of every device a GPU yields."""
    if not gpu.mig_enabled or strategy is MigStrategy.NONE:
        return [(GPU_RESOURCE, gpu.uuid, gpu, None)]
    units: list[_Unit] = []
    for device in gpu.mig_devices:
        if "c." in device.profile or not device.uuid:
            continue  # a partial compute instance made by someone else: not a resource
        base = GPU_RESOURCE if strategy is MigStrategy.SINGLE else mig_resource_name(device.profile)
        units.append((base, device.uuid, gpu, (device.gpu_instance, device.compute_instance)))
    return units
