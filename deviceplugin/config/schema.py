"""The node's configuration: parsing and strict validation.

fatia reads one YAML document (ConfigMap key ``config.yaml``) in one of three
formats and turns it into a frozen :class:`Config`:

- fatia ``v1`` (the design's schema: ``gpus`` rules, ``sharing``,
  ``migStrategy``, ``plugin``, ``health``, and ``dra``: DRA mode's policies, which
  device-plugin mode ignores, so that one ConfigMap can serve nodes of both modes);
- a mig-parted ``v1`` file (``mig-configs``; ``select`` names the config to
  apply, and may be left out when there is only one);
- an NVIDIA device-plugin ``v1`` file (``flags``, ``sharing``).

Validation is strict, unlike NVIDIA's tools, which drop what they do not
understand: an unknown key, a wrong type, a malformed profile name, a number out
of its range (every number is finite and bounded, every list and name of bounded
length: :mod:`deviceplugin.config.limits`) or a key of NVIDIA's formats that fatia
would have to ignore is a :class:`ConfigError` whose message names the key path
(``gpus[1].mig-devices.1g.5gbb: ...``; the typed getters are :mod:`deviceplugin.config.strict`,
shared with DRA claim parameters). The document is read by the bounded loader
(:mod:`deviceplugin.config.yamlload`), whose errors name the line and column
(``config.yaml:3:5: duplicate key "replicas"``). Whether a profile exists on a
given GPU, and whether the devices a config makes fit the kubelet, is decided when
planning, against the GPUs NVML reports.

The digest is taken from the validated :class:`Config`, never from the document: it
ignores key order, layout and comments, and costs the same however the text was
written (an alias expands in the document, not in the model).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from deviceplugin.config import limits
from deviceplugin.config.strict import Node, check_range, kind_of, show
from deviceplugin.config.yamlload import DocumentError, load
from mig.errors import ConfigError


class MigStrategy(StrEnum):
    """How MIG devices are named (NVIDIA's ``migStrategy``)."""

    MIXED = "mixed"  # nvidia.com/mig-<profile> per profile
    SINGLE = "single"  # every GPU one profile, advertised as nvidia.com/gpu
    NONE = "none"  # MIG devices are not advertised


class DeviceListStrategy(StrEnum):
    """How a container is told its devices (NVIDIA's ``deviceListStrategy``)."""

    ENVVAR = "envvar"
    VOLUME_MOUNTS = "volume-mounts"
    CDI_CRI = "cdi-cri"


class AllocationPolicy(StrEnum):
    """Which replicas GetPreferredAllocation prefers (``sharedDevicesAllocationPolicy``)."""

    DISTRIBUTED = "distributed"
    PACKED = "packed"


class ReusePolicy(StrEnum):
    """What DRA mode's NodeUnprepareResources does with the claim's MIG instance (``dra.reuse``)."""

    NEVER = "never"  # destroy it
    IDENTICAL = "identical"  # keep it for a later claim of the same placement


class TaintEffect(StrEnum):
    """The effect of the taint DRA mode puts on an unhealthy device (``dra.taintEffect``)."""

    NO_SCHEDULE = "NoSchedule"  # no new claim gets it
    NO_EXECUTE = "NoExecute"  # and pods using it are evicted (kube-controller-manager)


MIG_STRATEGIES = tuple(MigStrategy)
REUSE_POLICIES = tuple(ReusePolicy)
TAINT_EFFECTS = tuple(TaintEffect)
DEVICE_LIST_STRATEGIES = tuple(DeviceListStrategy)
ALLOCATION_POLICIES = tuple(AllocationPolicy)
# XIDs NVIDIA's device plugin ignores by default: application errors after
# which the GPU is still healthy.
DEFAULT_IGNORED_XIDS = (13, 31, 43, 45, 68, 109)

_PROFILE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:\+me(?:\.all)?|\+gfx|-me)?$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


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
    path: str = field(default="", compare=False)  # "sharing.timeSlicing.resources[0]", for messages


@dataclass(frozen=True)
class TimeSlicing:
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool = False
    resources: tuple[SharedResource, ...] = ()

    def replicas_for(self, resource: str) -> int | None:
        return next((r.replicas for r in self.resources if r.name == resource), None)


@dataclass(frozen=True)
class PluginOptions:
    device_list_strategy: tuple[DeviceListStrategy, ...] = (DeviceListStrategy.ENVVAR,)
    pass_device_specs: bool = False
    allocation_policy: AllocationPolicy = AllocationPolicy.DISTRIBUTED


@dataclass(frozen=True)
class HealthPolicy:
    enabled: bool = True
    ignored_xids: frozenset[int] = frozenset(DEFAULT_IGNORED_XIDS)
    fatal_xids: frozenset[int] = frozenset()  # fatal even if ignored
    recovery_seconds: float = 60.0
    liveness_seconds: float = 10.0  # how often every GPU is read to find one lost without an event

    def is_fatal(self, xid: int) -> bool:
        return xid in self.fatal_xids or xid not in self.ignored_xids


@dataclass(frozen=True)
class DraPolicy:
    """DRA mode's policies; device-plugin mode reads them and does nothing with them."""

    reuse: ReusePolicy = ReusePolicy.NEVER
    taint_effect: TaintEffect = TaintEffect.NO_SCHEDULE


@dataclass(frozen=True)
class Config:
    gpus: tuple[GpuRule, ...] = ()
    time_slicing: TimeSlicing = TimeSlicing()
    mig_strategy: MigStrategy = MigStrategy.MIXED
    plugin: PluginOptions = PluginOptions()
    health: HealthPolicy = HealthPolicy()
    dra: DraPolicy = DraPolicy()
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
        doc = load(text)
    except DocumentError as exc:
        where = f"{source}:{exc.line}:{exc.column}:" if exc.line is not None else f"{source}:"
        raise ConfigError(f"{where} {exc.problem}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the document must be a mapping, not {kind_of(doc)}")
    try:
        if "mig-configs" in doc:
            config = _parse_mig_parted(Node(doc, ""))
        elif "flags" in doc or "resources" in doc:
            config = _parse_nvidia_plugin(Node(doc, ""))
        else:
            config = _parse_fatia(Node(doc, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(config, digest=config_digest(config))


def config_digest(config: Config) -> str:
    """A short hash of what the config means (the validated model, not its text)."""
    model = dataclasses.asdict(dataclasses.replace(config, digest=""))
    if config.dra == DraPolicy():
        del model["dra"]  # the digest of a config without a dra block stays what it was before it
    canonical = json.dumps(model, sort_keys=True, default=_sorted_set)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _sorted_set(value: object) -> list[Any]:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} in a Config")  # pragma: no cover - a bug


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_version(node: Node, *, required: bool) -> None:
    version = node.get("version", str)
    if version is None and required:
        raise ConfigError("version: missing; this schema needs 'version: v1'")
    if version not in (None, "v1"):
        raise ConfigError(f"version: unknown version {show(version)}; fatia reads v1")


def _parse_fatia(doc: Node) -> Config:
    doc.only("version", "gpus", "sharing", "migStrategy", "plugin", "health", "dra")
    # An empty document (a ConfigMap key with nothing in it yet) means the defaults.
    _check_version(doc, required=bool(doc.data))
    rules = tuple(_parse_rule(node) for node in doc.children("gpus", limits.MAX_RULES))
    plugin = doc.child("plugin")
    plugin.only("deviceListStrategy", "passDeviceSpecs", "sharedDevicesAllocationPolicy")
    return Config(
        gpus=rules,
        time_slicing=_parse_sharing(doc.child("sharing")),
        mig_strategy=MigStrategy(doc.choice("migStrategy", MIG_STRATEGIES, "mixed")),
        plugin=_parse_plugin(plugin),
        health=_parse_health(doc.child("health")),
        dra=_parse_dra(doc.child("dra")),
    )


def _parse_dra(node: Node) -> DraPolicy:
    node.only("reuse", "taintEffect")
    return DraPolicy(
        reuse=ReusePolicy(node.choice("reuse", REUSE_POLICIES, ReusePolicy.NEVER)),
        taint_effect=TaintEffect(node.choice("taintEffect", TAINT_EFFECTS, TaintEffect.NO_SCHEDULE)),
    )


def _parse_rule(node: Node) -> GpuRule:
    node.only("devices", "product", "mig-enabled", "mig-devices", "replicas")
    mig_devices = _parse_mig_devices(node)
    mig_enabled = node.get("mig-enabled", bool, bool(mig_devices) or "mig-devices" in node.data)
    if not mig_enabled and any(count for _, count in mig_devices):
        raise ConfigError(f"{node.at('mig-devices')}: MIG devices listed while mig-enabled is false")
    return GpuRule(
        path=node.path,
        devices=_parse_devices(node),
        product=node.text("product"),
        mig_enabled=mig_enabled,
        mig_devices=mig_devices,
        replicas=node.whole("replicas", maximum=limits.MAX_REPLICAS),
    )


def _parse_devices(node: Node) -> tuple[int | str, ...] | None:
    devices = node.get("devices", (str, list), "all")
    if devices == "all":
        return None
    if isinstance(devices, str):
        raise ConfigError(f"{node.at('devices')}: must be 'all' or a list, not {show(devices)}")
    devices = node.items("devices", limits.MAX_LIST)
    for i, item in enumerate(devices):
        index = _whole_number(item) and 0 <= item < limits.MAX_GPUS
        uuid = isinstance(item, str) and item.startswith("GPU-") and len(item) <= limits.MAX_STRING
        if not (index or uuid):
            raise ConfigError(
                f"{node.at('devices')}[{i}]: expected a GPU index (0 to {limits.MAX_GPUS - 1}) "
                f"or a 'GPU-…' UUID, got {show(item)}"
            )
    return tuple(devices)


def _parse_mig_devices(node: Node) -> tuple[tuple[str, int], ...]:
    devices = node.get("mig-devices", dict, {})
    if len(devices) > limits.MAX_MIG_PROFILES:
        raise ConfigError(
            f"{node.at('mig-devices')}: {len(devices)} profiles; at most {limits.MAX_MIG_PROFILES}"
        )
    parsed = []
    for name, count in devices.items():
        path = f"{node.at('mig-devices')}.{show(name).strip(chr(39))}"
        match = _PROFILE.match(name) if isinstance(name, str) and len(name) <= limits.MAX_STRING else None
        if match is None:
            raise ConfigError(f"{path}: not a MIG profile name (expected e.g. 1g.5gb, 3g.20gb or 1g.10gb+me)")
        if match.group(1) is not None and match.group(1) != match.group(2):
            raise ConfigError(
                f"{path}: compute-instance profiles ({name}) are not supported; fatia creates one "
                f"compute instance filling each GPU instance, so name the GPU-instance profile"
            )
        if not _whole_number(count) or count < 0:
            raise ConfigError(f"{path}: the count must be a whole number >= 0, not {show(count)}")
        check_range(path, count, 0, limits.MAX_MIG_COUNT)
        canonical = str(name) if match.group(1) is None else str(name).split(".", 1)[1]
        parsed.append((canonical, count))
    return tuple(parsed)


def _parse_sharing(node: Node) -> TimeSlicing:
    node.only("timeSlicing")
    ts = node.child("timeSlicing")
    ts.only("renameByDefault", "failRequestsGreaterThanOne", "resources")
    resources: list[SharedResource] = []
    for item in ts.children("resources", limits.MAX_SHARED_RESOURCES):
        item.only("name", "replicas", "devices")
        name = item.text("name", maximum=limits.MAX_NAME)
        if name is None:
            raise ConfigError(f"{item.at('name')}: missing")
        if not _RESOURCE.match(name):
            raise ConfigError(f"{item.at('name')}: {show(name)} is not an extended resource name")
        replicas = item.whole("replicas", maximum=limits.MAX_REPLICAS)
        if replicas is None:
            raise ConfigError(f"{item.at('replicas')}: missing")
        if item.get("devices", (str, int, list), "all") != "all":
            raise ConfigError(
                f"{item.at('devices')}: sharing only some devices of a resource is done with "
                f"gpus[].replicas; here only 'all' is accepted"
            )
        if any(r.name == name for r in resources):
            raise ConfigError(f"{item.at('name')}: {name} is listed twice")
        resources.append(SharedResource(name, replicas, path=item.path))
    return TimeSlicing(
        rename_by_default=ts.flag("renameByDefault"),
        fail_requests_greater_than_one=ts.flag("failRequestsGreaterThanOne"),
        resources=tuple(resources),
    )


def _parse_plugin(node: Node) -> PluginOptions:
    raw = node.get("deviceListStrategy", (str, list), "envvar")
    if isinstance(raw, list):
        raw = node.items("deviceListStrategy", limits.MAX_LIST)
    strategies = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
    for i, strategy in enumerate(strategies):
        if not isinstance(strategy, str) or strategy not in DEVICE_LIST_STRATEGIES:
            where = node.at("deviceListStrategy") + (f"[{i}]" if isinstance(raw, list) else "")
            raise ConfigError(
                f"{where}: unknown strategy {show(strategy)}; one of {', '.join(DEVICE_LIST_STRATEGIES)}"
            )
    if not strategies:
        raise ConfigError(f"{node.at('deviceListStrategy')}: at least one strategy is needed")
    return PluginOptions(
        device_list_strategy=tuple(DeviceListStrategy(s) for s in dict.fromkeys(strategies)),
        pass_device_specs=node.flag("passDeviceSpecs"),
        allocation_policy=AllocationPolicy(
            node.choice("sharedDevicesAllocationPolicy", ALLOCATION_POLICIES, "distributed")
        ),
    )


def _parse_health(node: Node) -> HealthPolicy:
    node.only("enabled", "ignoredXids", "fatalXids", "recoverySeconds", "livenessSeconds")
    ignored = _xid_list(node, "ignoredXids", DEFAULT_IGNORED_XIDS)
    fatal = _xid_list(node, "fatalXids", ())
    recovery = node.get("recoverySeconds", (int, float), 60.0)
    check_range(node.at("recoverySeconds"), recovery, limits.MIN_RECOVERY_S, limits.MAX_RECOVERY_S)
    liveness = node.get("livenessSeconds", (int, float), 10.0)
    check_range(node.at("livenessSeconds"), liveness, limits.MIN_LIVENESS_S, limits.MAX_LIVENESS_S)
    return HealthPolicy(
        enabled=node.flag("enabled", True),
        ignored_xids=frozenset(ignored),
        fatal_xids=frozenset(fatal),
        recovery_seconds=float(recovery),
        liveness_seconds=float(liveness),
    )


def _xid_list(node: Node, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    values = node.items(key, limits.MAX_XIDS, list(default))
    for i, value in enumerate(values):
        if not _whole_number(value) or not 0 < value <= limits.MAX_XID:
            raise ConfigError(
                f"{node.at(key)}[{i}]: expected an XID number (1 to {limits.MAX_XID}), got {show(value)}"
            )
    return tuple(values)


# -- NVIDIA's formats ----------------------------------------------------------


def _parse_mig_parted(doc: Node) -> Config:
    doc.only("version", "mig-configs", "select", "sharing", "migStrategy")
    _check_version(doc, required=True)
    configs = doc.get("mig-configs", dict, {})
    if not configs:
        raise ConfigError("mig-configs: at least one config is needed")
    names = [name for name in configs if isinstance(name, str)]
    if len(names) != len(configs):
        odd = next(name for name in configs if not isinstance(name, str))
        raise ConfigError(f"mig-configs: a config name must be a string, not {show(odd)}")
    # Every config is checked, as mig-parted does, not only the one selected: a mistake in
    # another config would otherwise surface only on the day someone selects it.
    parsed = {name: _parse_mig_parted_config(configs[name], f"mig-configs.{name}") for name in names}
    select = doc.text("select", maximum=limits.MAX_STRING)
    listed = ", ".join(show(n, 40).strip("'") for n in names[:20]) + (", …" if len(names) > 20 else "")
    if select is None:
        if len(names) != 1:
            raise ConfigError(f"select: missing; name the config to apply, one of {listed}")
        select = names[0]
    if select not in parsed:
        raise ConfigError(f"select: no config {show(select)} in mig-configs; have {listed}")
    return Config(
        gpus=parsed[select],
        time_slicing=_parse_sharing(doc.child("sharing")),
        mig_strategy=MigStrategy(doc.choice("migStrategy", MIG_STRATEGIES, "mixed")),
        source_format="mig-parted",
    )


def _parse_mig_parted_config(specs: object, path: str) -> tuple[GpuRule, ...]:
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{path}: expected a non-empty list of specs")
    if len(specs) > limits.MAX_RULES:
        raise ConfigError(f"{path}: {len(specs)} specs; at most {limits.MAX_RULES}")
    rules = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}[{i}]: expected a mapping, got {kind_of(spec)}")
        rules.append(_parse_mig_parted_spec(Node(spec, f"{path}[{i}]")))
    return tuple(rules)


def _parse_mig_parted_spec(node: Node) -> GpuRule:
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
    filters = [raw_filter] if isinstance(raw_filter, str) else node.items("device-filter", limits.MAX_LIST)
    return GpuRule(
        path=node.path,
        devices=devices,
        device_filter=tuple(
            _pci_id(f"{node.at('device-filter')}[{i}]", item) for i, item in enumerate(filters)
        ),
        mig_enabled=bool(mig_enabled),
        mig_devices=mig_devices,
    )


_PCI_ID = re.compile(r"^(?:0[xX])?([0-9a-fA-F]{1,8})(?::.*)?$")


def _pci_id(path: str, item: object) -> int:
    """A PCI device id ``0xDDDDVVVV`` (a string, as mig-parted writes it, or a YAML hex number)."""
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 0xFFFFFFFF:
        return item
    match = _PCI_ID.match(item) if isinstance(item, str) and len(item) <= limits.MAX_STRING else None
    if match is None:
        raise ConfigError(f"{path}: expected a PCI id like 0x20B010DE, got {show(item)}")
    return int(match.group(1), 16)


# NVIDIA device-plugin settings fatia reads and checks but has no use for: each of them
# changes nothing fatia does, at the value given. Any value that would change what a pod
# gets is rejected as "not supported by fatia" rather than silently ignored.
_NVIDIA_PATHS = ("mpsRoot", "nvidiaDriverRoot", "nvidiaDevRoot")
_NVIDIA_FLAGS = ("failOnInitError", "useNodeFeatureAPI")
_NVIDIA_FEATURES = {  # flag -> what NVIDIA's plugin would do that fatia does not
    "gdsEnabled": "GPUDirect Storage devices",
    "mofedEnabled": "MOFED devices",
    "gdrcopyEnabled": "GDRCopy devices",
}
_NVIDIA_PLUGIN_STRINGS = ("cdiAnnotationPrefix", "nvidiaCTKPath", "containerDriverRoot")


def _parse_nvidia_plugin(doc: Node) -> Config:
    doc.only("version", "flags", "sharing", "resources", "imex")
    _check_version(doc, required=False)
    flags = doc.child("flags")
    flags.only(
        "migStrategy",
        "plugin",
        "gfd",
        "deviceDiscoveryStrategy",
        *_NVIDIA_PATHS,
        *_NVIDIA_FLAGS,
        *_NVIDIA_FEATURES,
    )
    _check_nvidia_flags(flags)
    plugin = flags.child("plugin")
    plugin.only(
        "deviceListStrategy",
        "passDeviceSpecs",
        "sharedDevicesAllocationPolicy",
        "deviceIDStrategy",
        *_NVIDIA_PLUGIN_STRINGS,
    )
    for key in _NVIDIA_PLUGIN_STRINGS:
        plugin.text(key)
    if plugin.text("deviceIDStrategy", "uuid") != "uuid":
        raise ConfigError(
            f"{plugin.at('deviceIDStrategy')}: {show(plugin.data['deviceIDStrategy'])} is not supported "
            f"by fatia; device IDs are UUIDs (deviceIDStrategy: uuid)"
        )
    _check_nvidia_resources(doc.child("resources"))
    _check_nvidia_imex(doc.child("imex"))
    sharing = doc.child("sharing")
    sharing.only("timeSlicing", "mps")
    if sharing.get("mps", dict):
        raise ConfigError("sharing.mps: MPS sharing is not supported by fatia; use timeSlicing")
    used = ("deviceListStrategy", "passDeviceSpecs", "sharedDevicesAllocationPolicy")
    return Config(
        time_slicing=_parse_sharing(Node({"timeSlicing": sharing.data.get("timeSlicing")}, sharing.path)),
        mig_strategy=MigStrategy(flags.choice("migStrategy", MIG_STRATEGIES, "none")),
        plugin=_parse_plugin(Node({k: v for k, v in plugin.data.items() if k in used}, plugin.path)),
        source_format="nvidia-device-plugin",
    )


def _check_nvidia_flags(flags: Node) -> None:
    for key in _NVIDIA_PATHS:
        flags.text(key)  # where NVIDIA's plugin finds the driver; fatia reaches it through NVML
    for key in _NVIDIA_FLAGS:
        flags.flag(key)
    for key, what in _NVIDIA_FEATURES.items():
        if flags.flag(key):
            raise ConfigError(f"{flags.at(key)}: not supported by fatia (it does not inject {what})")
    strategy = flags.text("deviceDiscoveryStrategy", "auto")
    if strategy not in ("auto", "nvml"):
        raise ConfigError(
            f"{flags.at('deviceDiscoveryStrategy')}: {show(strategy)} is not supported by fatia, "
            f"which finds devices through NVML (auto or nvml)"
        )
    gfd = flags.child("gfd")  # gpu-feature-discovery's settings: another program's
    gfd.only("oneshot", "noTimestamp", "sleepInterval", "outputFile", "machineTypeFile")
    for key in ("oneshot", "noTimestamp"):
        gfd.flag(key)
    for key in ("sleepInterval", "outputFile", "machineTypeFile"):
        gfd.text(key)


def _check_nvidia_resources(resources: Node) -> None:
    """NVIDIA's ``resources`` renames resources; fatia accepts only the names it uses itself."""
    resources.only("gpus", "mig")
    for kind in ("gpus", "mig"):
        for entry in resources.children(kind, limits.MAX_SHARED_RESOURCES):
            entry.only("pattern", "name")
            pattern = entry.text("pattern")
            name = entry.text("name")
            if pattern is None or name is None:
                raise ConfigError(f"{entry.at('pattern' if pattern is None else 'name')}: missing")
            ours = "gpu" if kind == "gpus" else "mig-" + pattern.replace("+", ".")
            if name not in (ours, f"nvidia.com/{ours}"):
                raise ConfigError(
                    f"{entry.at('name')}: renaming resources ({show(name)}) is not supported by fatia, "
                    f"which names them as NVIDIA does by default ({ours})"
                )


def _check_nvidia_imex(imex: Node) -> None:
    imex.only("channelIDs", "required")
    imex.flag("required")
    channels = imex.items("channelIDs", limits.MAX_LIST)
    for i, channel in enumerate(channels):
        if not _whole_number(channel):
            raise ConfigError(f"{imex.at('channelIDs')}[{i}]: expected a channel number, got {show(channel)}")
    if channels:
        raise ConfigError(f"{imex.at('channelIDs')}: IMEX channels are not supported by fatia")
