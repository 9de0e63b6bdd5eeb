"""The node's configuration: parsing and strict validation.

fatia reads one YAML document (ConfigMap key ``config.yaml``) in one of three
formats and turns it into a frozen :class:`Config`:

- fatia ``v1`` (the design's schema: ``gpus`` rules, ``sharing``,
  ``migStrategy``, ``plugin``, ``health``);
- a mig-parted ``v1`` file (``mig-configs``; ``select`` names the config to
  apply, and may be left out when there is only one);
- an NVIDIA device-plugin ``v1`` file (``flags``, ``sharing``).

Validation is strict, unlike NVIDIA's tools, which drop what they do not
understand: an unknown key, a wrong type, a malformed profile name or
``replicas < 1`` is a :class:`ConfigError` whose message names the key path
(``gpus[1].mig-devices.1g.5gbb: ...``). Whether a profile exists on a given
GPU is decided when planning, against the profiles NVML reports.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mig.errors import FatiaError

MIG_STRATEGIES = ("mixed", "single", "none")
DEVICE_LIST_STRATEGIES = ("envvar", "volume-mounts", "cdi-cri")
ALLOCATION_POLICIES = ("distributed", "packed")
# XIDs NVIDIA's device plugin ignores by default: application errors after
# which the GPU is still healthy.
DEFAULT_IGNORED_XIDS = (13, 31, 43, 45, 68, 109)

_PROFILE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:\+me(?:\.all)?|\+gfx|-me)?$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class ConfigError(FatiaError):
    """A config that cannot be used; the message names the key path."""


@dataclass(frozen=True)
class GpuRule:
    """One entry of ``gpus``: which GPUs it matches and what they should become."""

    path: str  # "gpus[0]", for messages
    devices: tuple[int | str, ...] | None = None  # None: all
    product: str | None = None  # glob on the NVML product name
    device_filter: tuple[int, ...] = ()  # PCI ids 0xDDDDVVVV (mig-parted)
    mig_enabled: bool = False
    mig_devices: tuple[tuple[str, int], ...] = ()
    replicas: int | None = None

    def matches(self, *, index: int, uuid: str, product: str, pci_device_id: int) -> bool:
        if self.devices is not None and index not in self.devices and uuid not in self.devices:
            return False
        if self.product is not None and not fnmatch.fnmatch(product.lower(), self.product.lower()):
            return False
        return not self.device_filter or pci_device_id in self.device_filter

    @property
    def desired(self) -> dict[str, int]:
        return {name: count for name, count in self.mig_devices if count > 0}


@dataclass(frozen=True)
class SharedResource:
    name: str
    replicas: int


@dataclass(frozen=True)
class TimeSlicing:
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    resources: tuple[SharedResource, ...] = ()

    def replicas_for(self, resource: str) -> int | None:
        return next((r.replicas for r in self.resources if r.name == resource), None)


@dataclass(frozen=True)
class PluginOptions:
    device_list_strategy: tuple[str, ...] = ("envvar",)
    pass_device_specs: bool = False
    allocation_policy: str = "distributed"


@dataclass(frozen=True)
class HealthPolicy:
    enabled: bool = True
    ignored_xids: frozenset[int] = frozenset(DEFAULT_IGNORED_XIDS)
    fatal_xids: frozenset[int] = frozenset()  # fatal even if ignored
    recovery_seconds: float = 60.0

    def is_fatal(self, xid: int) -> bool:
        return xid in self.fatal_xids or xid not in self.ignored_xids


@dataclass(frozen=True)
class Config:
    gpus: tuple[GpuRule, ...] = ()
    time_slicing: TimeSlicing = TimeSlicing()
    mig_strategy: str = "mixed"
    plugin: PluginOptions = PluginOptions()
    health: HealthPolicy = HealthPolicy()
    source_format: str = "fatia"
    digest: str = field(default="", compare=False)

    def rule_for(self, *, index: int, uuid: str, product: str, pci_device_id: int) -> GpuRule | None:
        """The first rule that matches a GPU; None leaves the GPU as it is."""
        return next(
            (
                r
                for r in self.gpus
                if r.matches(index=index, uuid=uuid, product=product, pci_device_id=pci_device_id)
            ),
            None,
        )


def parse_config(text: str, *, source: str = "config") -> Config:
    """Parse and validate a config document; raises :class:`ConfigError`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the document must be a mapping, not {_kind(doc)}")
    try:
        if "mig-configs" in doc:
            config = _parse_mig_parted(_Node(doc, ""))
        elif "flags" in doc or "resources" in doc:
            config = _parse_nvidia_plugin(_Node(doc, ""))
        else:
            config = _parse_fatia(_Node(doc, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return dataclasses.replace(config, digest=digest[:16])


_TYPE_NAMES: dict[type, str] = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "empty",
}


def _kind(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Node:
    """A mapping being validated: typed getters, and a check for unknown keys."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def at(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def only(self, *allowed: str) -> None:
        unknown = [k for k in self.data if k not in allowed]
        if unknown:
            raise ConfigError(f"{self.at(str(unknown[0]))}: unknown key; allowed here: {', '.join(allowed)}")

    def get(self, key: str, types: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        wanted = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in wanted:
            raise ConfigError(f"{self.at(key)}: expected {_names(wanted)}, got a boolean")
        if not isinstance(value, wanted):
            raise ConfigError(f"{self.at(key)}: expected {_names(wanted)}, got {_kind(value)}")
        return value

    def child(self, key: str) -> _Node:
        return _Node(self.get(key, dict, {}), self.at(key))

    def children(self, key: str) -> list[_Node]:
        items = self.get(key, list, [])
        nodes = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.at(key)}[{i}]: expected a mapping, got {_kind(item)}")
            nodes.append(_Node(item, f"{self.at(key)}[{i}]"))
        return nodes

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(f"{self.at(key)}: must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def positive(self, key: str, default: int | None = None, *, minimum: int = 1) -> int | None:
        value = self.get(key, int, default)
        if value is not None and value < minimum:
            raise ConfigError(f"{self.at(key)}: must be at least {minimum}, not {value}")
        return value


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _check_version(node: _Node, *, required: bool) -> None:
    version = node.get("version", str)
    if version is None and required:
        raise ConfigError("version: missing; this schema needs 'version: v1'")
    if version not in (None, "v1"):
        raise ConfigError(f"version: unknown version {version!r}; fatia reads v1")


def _parse_fatia(doc: _Node) -> Config:
    doc.only("version", "gpus", "sharing", "migStrategy", "plugin", "health")
    # An empty document (a ConfigMap key with nothing in it yet) means the defaults.
    _check_version(doc, required=bool(doc.data))
    rules = tuple(_parse_rule(node) for node in doc.children("gpus"))
    plugin = doc.child("plugin")
    plugin.only("deviceListStrategy", "passDeviceSpecs", "sharedDevicesAllocationPolicy")
    return Config(
        gpus=rules,
        time_slicing=_parse_sharing(doc.child("sharing")),
        mig_strategy=doc.choice("migStrategy", MIG_STRATEGIES, "mixed"),
        plugin=_parse_plugin(plugin),
        health=_parse_health(doc.child("health")),
    )


def _parse_rule(node: _Node) -> GpuRule:
    node.only("devices", "product", "mig-enabled", "mig-devices", "replicas")
    mig_devices = _parse_mig_devices(node)
    mig_enabled = node.get("mig-enabled", bool, bool(mig_devices) or "mig-devices" in node.data)
    if not mig_enabled and any(count for _, count in mig_devices):
        raise ConfigError(f"{node.at('mig-devices')}: MIG devices listed while mig-enabled is false")
    return GpuRule(
        path=node.path,
        devices=_parse_devices(node),
        product=node.get("product", str),
        mig_enabled=mig_enabled,
        mig_devices=mig_devices,
        replicas=node.positive("replicas"),
    )


def _parse_devices(node: _Node) -> tuple[int | str, ...] | None:
    devices = node.get("devices", (str, list), "all")
    if devices == "all":
        return None
    if isinstance(devices, str):
        raise ConfigError(f"{node.at('devices')}: must be 'all' or a list, not {devices!r}")
    for i, item in enumerate(devices):
        ok = (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
            isinstance(item, str) and item.startswith("GPU-")
        )
        if not ok:
            raise ConfigError(
                f"{node.at('devices')}[{i}]: expected a GPU index or a 'GPU-…' UUID, got {item!r}"
            )
    return tuple(devices)


def _parse_mig_devices(node: _Node) -> tuple[tuple[str, int], ...]:
    devices = node.get("mig-devices", dict, {})
    parsed = []
    for name, count in devices.items():
        path = f"{node.at('mig-devices')}.{name}"
        match = _PROFILE.match(str(name))
        if match is None:
            raise ConfigError(f"{path}: not a MIG profile name (expected e.g. 1g.5gb, 3g.20gb or 1g.10gb+me)")
        if match.group(1) is not None and match.group(1) != match.group(2):
            raise ConfigError(
                f"{path}: compute-instance profiles ({name}) are not supported; fatia creates one "
                f"compute instance filling each GPU instance, so name the GPU-instance profile"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{path}: the count must be a whole number >= 0, not {count!r}")
        canonical = str(name) if match.group(1) is None else str(name).split(".", 1)[1]
        parsed.append((canonical, count))
    return tuple(parsed)


def _parse_sharing(node: _Node) -> TimeSlicing:
    node.only("timeSlicing")
    ts = node.child("timeSlicing")
    ts.only("renameByDefault", "failRequestsGreaterThanOne", "resources")
    resources: list[SharedResource] = []
    for item in ts.children("resources"):
        item.only("name", "replicas", "devices")
        name = item.get("name", str)
        if name is None:
            raise ConfigError(f"{item.at('name')}: missing")
        if not _RESOURCE.match(name):
            raise ConfigError(f"{item.at('name')}: {name!r} is not an extended resource name")
        replicas = item.positive("replicas")
        if replicas is None:
            raise ConfigError(f"{item.at('replicas')}: missing")
        if item.get("devices", (str, int, list), "all") != "all":
            raise ConfigError(
                f"{item.at('devices')}: sharing only some devices of a resource is done with "
                f"gpus[].replicas; here only 'all' is accepted"
            )
        if any(r.name == name for r in resources):
            raise ConfigError(f"{item.at('name')}: {name} is listed twice")
        resources.append(SharedResource(name, replicas))
    return TimeSlicing(
        rename_by_default=ts.get("renameByDefault", bool, False),
        fail_requests_greater_than_one=ts.get("failRequestsGreaterThanOne", bool, False),
        resources=tuple(resources),
    )


def _parse_plugin(node: _Node) -> PluginOptions:
    raw = node.get("deviceListStrategy", (str, list), "envvar")
    strategies = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
    for i, strategy in enumerate(strategies):
        if strategy not in DEVICE_LIST_STRATEGIES:
            where = node.at("deviceListStrategy") + (f"[{i}]" if isinstance(raw, list) else "")
            raise ConfigError(
                f"{where}: unknown strategy {strategy!r}; one of {', '.join(DEVICE_LIST_STRATEGIES)}"
            )
    if not strategies:
        raise ConfigError(f"{node.at('deviceListStrategy')}: at least one strategy is needed")
    return PluginOptions(
        device_list_strategy=tuple(dict.fromkeys(strategies)),
        pass_device_specs=node.get("passDeviceSpecs", bool, False),
        allocation_policy=node.choice("sharedDevicesAllocationPolicy", ALLOCATION_POLICIES, "distributed"),
    )


def _parse_health(node: _Node) -> HealthPolicy:
    node.only("enabled", "ignoredXids", "fatalXids", "recoverySeconds")
    ignored = _xid_list(node, "ignoredXids", DEFAULT_IGNORED_XIDS)
    fatal = _xid_list(node, "fatalXids", ())
    recovery = node.get("recoverySeconds", (int, float), 60.0)
    if recovery <= 0:
        raise ConfigError(f"{node.at('recoverySeconds')}: must be above 0, not {recovery}")
    return HealthPolicy(
        enabled=node.get("enabled", bool, True),
        ignored_xids=frozenset(ignored),
        fatal_xids=frozenset(fatal),
        recovery_seconds=float(recovery),
    )


def _xid_list(node: _Node, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    values = node.get(key, list, list(default))
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{node.at(key)}[{i}]: expected an XID number, got {value!r}")
    return tuple(values)


# -- NVIDIA's formats ----------------------------------------------------------


def _parse_mig_parted(doc: _Node) -> Config:
    doc.only("version", "mig-configs", "select", "sharing", "migStrategy")
    _check_version(doc, required=True)
    configs = doc.get("mig-configs", dict, {})
    if not configs:
        raise ConfigError("mig-configs: at least one config is needed")
    select = doc.get("select", str)
    if select is None:
        if len(configs) != 1:
            raise ConfigError(
                f"select: missing; name the config to apply, one of {', '.join(map(str, configs))}"
            )
        select = next(iter(configs))
    if select not in configs:
        raise ConfigError(f"select: no config {select!r} in mig-configs; have {', '.join(map(str, configs))}")
    path = f"mig-configs.{select}"
    specs = configs[select]
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{path}: expected a non-empty list of specs")
    rules = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}[{i}]: expected a mapping, got {_kind(spec)}")
        rules.append(_parse_mig_parted_spec(_Node(spec, f"{path}[{i}]")))
    return Config(
        gpus=tuple(rules),
        time_slicing=_parse_sharing(doc.child("sharing")),
        mig_strategy=doc.choice("migStrategy", MIG_STRATEGIES, "mixed"),
        source_format="mig-parted",
    )


def _parse_mig_parted_spec(node: _Node) -> GpuRule:
    node.only("devices", "mig-enabled", "mig-devices", "device-filter")
    for required in ("devices", "mig-enabled"):
        if required not in node.data:
            raise ConfigError(f"{node.at(required)}: missing (mig-parted requires it)")
    mig_enabled = node.get("mig-enabled", bool)
    mig_devices = _parse_mig_devices(node)
    if not mig_enabled and mig_devices:
        raise ConfigError(f"{node.at('mig-devices')}: MIG devices included when mig-enabled is false")
    if mig_devices and not any(count for _, count in mig_devices):
        raise ConfigError(f"{node.at('mig-devices')}: all counts are 0")
    devices = _parse_devices(node)
    if devices and any(isinstance(d, str) for d in devices):
        raise ConfigError(f"{node.at('devices')}: mig-parted selects GPUs by index only")
    raw_filter = node.get("device-filter", (str, list), [])
    filters = [raw_filter] if isinstance(raw_filter, str) else raw_filter
    pci_ids = []
    for i, item in enumerate(filters):
        try:
            pci_ids.append(int(str(item).split(":")[0], 16))
        except ValueError:
            raise ConfigError(
                f"{node.at('device-filter')}[{i}]: expected a PCI id like 0x20B010DE, got {item!r}"
            ) from None
    return GpuRule(
        path=node.path,
        devices=devices,
        device_filter=tuple(pci_ids),
        mig_enabled=bool(mig_enabled),
        mig_devices=mig_devices,
    )


# NVIDIA device-plugin flags fatia accepts without acting on them.
_NVIDIA_IGNORED_FLAGS = (
    "failOnInitError",
    "mpsRoot",
    "nvidiaDriverRoot",
    "nvidiaDevRoot",
    "gdrcopyEnabled",
    "gdsEnabled",
    "mofedEnabled",
    "useNodeFeatureAPI",
    "deviceDiscoveryStrategy",
    "gfd",
)
_NVIDIA_IGNORED_PLUGIN = (
    "deviceIDStrategy",
    "cdiAnnotationPrefix",
    "nvidiaCTKPath",
    "containerDriverRoot",
)


def _parse_nvidia_plugin(doc: _Node) -> Config:
    doc.only("version", "flags", "sharing", "resources", "imex")
    _check_version(doc, required=False)
    flags = doc.child("flags")
    flags.only("migStrategy", "plugin", *_NVIDIA_IGNORED_FLAGS)
    plugin = flags.child("plugin")
    plugin.only(
        "deviceListStrategy", "passDeviceSpecs", "sharedDevicesAllocationPolicy", *_NVIDIA_IGNORED_PLUGIN
    )
    sharing = doc.child("sharing")
    sharing.only("timeSlicing", "mps")
    if sharing.get("mps", dict):
        raise ConfigError("sharing.mps: MPS sharing is not supported by fatia; use timeSlicing")
    return Config(
        time_slicing=_parse_sharing(_Node({"timeSlicing": sharing.data.get("timeSlicing")}, sharing.path)),
        mig_strategy=flags.choice("migStrategy", MIG_STRATEGIES, "none"),
        plugin=_parse_plugin(
            _Node({k: v for k, v in plugin.data.items() if k not in _NVIDIA_IGNORED_PLUGIN}, plugin.path)
        ),
        source_format="nvidia-device-plugin",
    )
