"""The ``gpu.fatia.dev`` parameters of a ResourceClaim: how the processes on its devices share them.

In DRA, *sharing* a device is several pods referencing one ResourceClaim: the kubelet
prepares the claim once per node and every container of those pods gets the same device.
What is left to choose is how their processes take turns, and a claim says it in an opaque
config for this driver, in the shape of NVIDIA's DRA driver's ``GpuConfig`` so that a claim
migrates by renaming the driver and ``apiVersion``::

    config:
      - requests: [gpu]                 # left out: every request of the claim
        opaque:
          driver: gpu.fatia.dev
          parameters:
            apiVersion: gpu.fatia.dev/v1alpha1
            kind: GpuConfig
            sharing:
              strategy: TimeSlicing     # the one strategy (MPS is not supported)
              interval: Long            # Default (when left out) | Short | Medium | Long

NVIDIA's spelling of the interval, ``timeSlicingConfig: {interval: Long}``, is read too.
What the interval does, and that only a whole GPU has one to set, is :mod:`mig.timeslice`'s
and :mod:`.prepare`'s business; here it is only read.

The scheduler copies a claim's configs, and its DeviceClasses' (``spec.config``), into
``status.allocation.devices.config``, which is what is read. An entry applies to the
requests it lists (all of them when it lists none; ``gpu`` also covers a subrequest
``gpu/small``), and for one request the last entry that applies wins whole, the class's
(``FromClass``) coming before the claim's (``FromClaim``). A request no entry applies to has
no sharing config.

Validation is the ConfigMap's (:mod:`deviceplugin.config.strict`): an unknown key, a wrong
type, a missing or wrong ``apiVersion``/``kind`` or a value not among the choices is a
:class:`~mig.errors.ConfigError` naming the key path. A claim's own entry is named by its
place in the claim's ``devices.config`` (what the user wrote); an entry of a class by its
place in ``status.allocation.devices.config``. Pure: the claim's JSON in, values out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deviceplugin.config.strict import Node, show
from deviceplugin.dra import DRIVER_NAME
from mig.errors import ConfigError
from mig.timeslice import DEFAULT, INTERVALS

API_VERSION = "gpu.fatia.dev/v1alpha1"
KIND = "GpuConfig"
TIME_SLICING = "TimeSlicing"
STRATEGY_ENV = "FATIA_SHARING_STRATEGY"
INTERVAL_ENV = "FATIA_TIMESLICE_INTERVAL"


@dataclass(frozen=True)
class Sharing:
    """How the processes on one prepared device share it."""

    strategy: str = TIME_SLICING
    interval: str = INTERVALS[DEFAULT]
    path: str = field(default="", compare=False)  # the interval's key path, for messages

    @property
    def level(self) -> int:
        """The interval as ``nvidia-smi --set-timeslice`` takes it (0 Default ... 3 Long)."""
        return INTERVALS.index(self.interval)

    def env(self) -> tuple[str, ...]:
        """What the workload's containers are told (CDI container edits)."""
        return (f"{STRATEGY_ENV}={self.strategy}", f"{INTERVAL_ENV}={self.interval}")


@dataclass(frozen=True)
class _Entry:
    requests: tuple[str, ...]  # () applies to every request
    sharing: Sharing | None


@dataclass(frozen=True)
class ClaimSharing:
    """A claim's ``gpu.fatia.dev`` entries, earliest first: a later one wins."""

    entries: tuple[_Entry, ...] = ()

    def for_request(self, request: str) -> Sharing | None:
        """The sharing of the devices allocated for ``request`` (``req`` or ``req/sub``)."""
        chosen = None
        for entry in self.entries:
            if not entry.requests or request in entry.requests or request.split("/")[0] in entry.requests:
                chosen = entry.sharing
        return chosen


def claim_sharing(claim: Mapping[str, Any]) -> ClaimSharing:
    """Every ``gpu.fatia.dev`` entry of the claim's allocation, validated; a ConfigError if one is bad."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    configs: Sequence[Mapping[str, Any]] = (allocation.get("devices") or {}).get("config") or []
    own: Sequence[Mapping[str, Any]] = ((claim.get("spec") or {}).get("devices") or {}).get("config") or []
    found: list[tuple[int, int, _Entry]] = []
    for index, config in enumerate(configs):
        opaque = config.get("opaque") or {}
        if opaque.get("driver") != DRIVER_NAME:
            continue
        path = _entry_path(config, index, own)
        parameters = Node(opaque, f"{path}.opaque").child("parameters")
        requests = tuple(str(r) for r in config.get("requests") or ())
        rank = 0 if config.get("source") == "FromClass" else 1
        found.append((rank, index, _Entry(requests, parse_parameters(parameters))))
    return ClaimSharing(tuple(entry for _, _, entry in sorted(found, key=lambda f: f[:2])))


def parse_parameters(node: Node) -> Sharing | None:
    """One entry's ``parameters``: a GpuConfig, with or without ``sharing``."""
    for key, wanted in (("apiVersion", API_VERSION), ("kind", KIND)):
        value = node.text(key)
        if value is None:
            raise ConfigError(f"{node.at(key)}: missing; {DRIVER_NAME} parameters need {key}: {wanted}")
        if value != wanted:
            raise ConfigError(f"{node.at(key)}: must be {wanted}, not {show(value)}")
    node.only("apiVersion", "kind", "sharing")
    if node.get("sharing", dict) is None:
        return None
    return _sharing(node.child("sharing"))


def _sharing(node: Node) -> Sharing:
    strategy = node.text("strategy")
    if strategy is None:
        raise ConfigError(f"{node.at('strategy')}: missing; fatia shares by {TIME_SLICING}")
    if strategy == "MPS":
        raise ConfigError(
            f"{node.at('strategy')}: MPS is not supported by fatia (it runs no MPS control daemon); "
            f"use {TIME_SLICING}"
        )
    node.choice("strategy", (TIME_SLICING,), TIME_SLICING)
    node.only("strategy", "interval", "timeSlicingConfig")
    if node.get("timeSlicingConfig", dict) is None:
        return Sharing(strategy, node.choice("interval", INTERVALS, INTERVALS[DEFAULT]), node.at("interval"))
    if node.get("interval", str) is not None:
        raise ConfigError(
            f"{node.at('timeSlicingConfig')}: the interval is already set by {node.at('interval')}"
        )
    nvidia = node.child("timeSlicingConfig")
    nvidia.only("interval")
    return Sharing(strategy, nvidia.choice("interval", INTERVALS, INTERVALS[DEFAULT]), nvidia.at("interval"))


def _entry_path(config: Mapping[str, Any], index: int, own: Sequence[Mapping[str, Any]]) -> str:
    """Where the user wrote the entry: the claim's ``devices.config[k]``, else the allocation's."""
    if config.get("source") != "FromClass":
        k = next((k for k, c in enumerate(own) if c.get("opaque") == config.get("opaque")), None)
        if k is not None:
            return f"devices.config[{k}]"
    return f"status.allocation.devices.config[{index}]"
