"""A claim's allocation, read from the API and resolved in this node's pool.

Step 2 of a prepare (:mod:`.prepare`): the ResourceClaim the kubelet named is read and
its allocation turned into the :class:`~.checkpoint.PreparedDevice` entries the rest of
the prepare works on. Nothing here touches a GPU: the read is the API server's, the
resolution (:func:`allocated_devices`) a pure function of the claim, the pool and the
node's name. It runs on the gRPC thread that serves the call, before the preparer takes
its lock, so a slow API server holds up no other claim's NVML work.

An allocation that cannot be prepared is a :class:`PrepareError` that names the claim: a
UID other than the kubelet's (the claim was recreated), no device of this driver, a device
of another node's pool or not (or no longer) in this one, invalid ``gpu.fatia.dev``
parameters (:mod:`.sharing`), or an interval other than Default for a MIG device or for a
device held with admin access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.checkpoint import PreparedDevice
from deviceplugin.dra.devices import PoolModel
from deviceplugin.dra.sharing import claim_sharing
from mig.errors import ConfigError, FatiaError
from mig.timeslice import DEFAULT


class PrepareError(FatiaError):
    """A claim that cannot be prepared or unprepared; the message says why."""


class ClaimReader(Protocol):
    """Reads a ResourceClaim (as the API's JSON) by namespace and name."""

    def get(self, namespace: str, name: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ClaimRef:
    """A claim as the kubelet names it in a call."""

    namespace: str
    uid: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Allocations:
    """Where a claim's allocated devices are found: the API's claims, this node's pool."""

    claims: ClaimReader
    node_name: str
    pool: Callable[[], PoolModel]

    def devices(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        """This driver's allocated devices of the claim, resolved in the current pool."""
        claim = read_claim(self.claims, ref)
        return allocated_devices(ref, claim, pool=self.pool, node_name=self.node_name)


def read_claim(claims: ClaimReader, ref: ClaimRef) -> Mapping[str, Any]:
    try:
        return claims.get(ref.namespace, ref.name)
    except Exception as exc:  # the API's error, whatever the client raises
        raise PrepareError(f"cannot read ResourceClaim {ref.namespace}/{ref.name}: {exc}") from exc


def allocated_devices(
    ref: ClaimRef, claim: Mapping[str, Any], *, pool: Callable[[], PoolModel], node_name: str
) -> tuple[PreparedDevice, ...]:
    """This driver's allocated devices of ``claim``, resolved in the pool (read once the
    claim itself has passed), each with the sharing its request's parameters give."""
    where = f"ResourceClaim {ref.namespace}/{ref.name}"
    uid = claim.get("metadata", {}).get("uid")
    if uid != ref.uid:
        raise PrepareError(f"{where} has UID {uid}, not {ref.uid} as the kubelet asked (recreated?)")
    allocation = (claim.get("status") or {}).get("allocation") or {}
    results = [
        r for r in (allocation.get("devices") or {}).get("results") or [] if r.get("driver") == DRIVER_NAME
    ]
    if not results:
        raise PrepareError(f"{where} has no device of driver {DRIVER_NAME} allocated")
    try:
        sharing = claim_sharing(claim)
    except ConfigError as exc:
        raise PrepareError(f"{where}: {exc}") from exc
    model = pool()
    devices = []
    for result in results:
        name, pool_name = str(result.get("device")), str(result.get("pool"))
        if pool_name != node_name:
            raise PrepareError(
                f"{where}: device {name} is from pool {pool_name}, not this node's ({node_name})"
            )
        device = model.device(name)
        if device is None:
            raise PrepareError(f"{where}: device {name} is not (or no longer) in this node's pool")
        request = str(result.get("request"))
        chosen = sharing.for_request(request)
        if chosen is not None and chosen.level != DEFAULT and device.placement is not None:
            raise PrepareError(
                f"{where}: {chosen.path}: {chosen.interval} cannot be set for {name} (request "
                f"{request}): a MIG device is time-sliced at the Default interval only"
            )
        if chosen is not None and chosen.level != DEFAULT and result.get("adminAccess"):
            raise PrepareError(
                f"{where}: {chosen.path}: {chosen.interval} cannot be set for {name} (request "
                f"{request}) with admin access: the device is another claim's"
            )
        devices.append(
            PreparedDevice(
                device=name,
                request_names=(request,),
                pool=pool_name,
                gpu_uuid=device.gpu_uuid,
                gpu_index=device.gpu_index,
                placement=device.placement,
                share_id=result.get("shareID"),
                sharing=chosen,
            )
        )
    return tuple(devices)
