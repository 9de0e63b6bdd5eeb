"""Which devices pods hold, from the kubelet's PodResources API.

The kubelet has no "device released" callback; the only way for a plugin to
know that a device is in use is PodResources ``List``, which reports exactly
the IDs that were advertised (replica suffixes included) for every active
pod's containers, sidecars included. fatia asks it before destroying anything.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from deviceplugin.api.podresources.v1 import api_pb2, api_pb2_grpc
from mig.errors import PodResourcesUnavailable


class PodResourcesClient:
    def __init__(self, socket: Path, *, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout

    def held_device_ids(self) -> set[str]:
        """Every device ID any container of an active pod holds."""
        try:
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                response = api_pb2_grpc.PodResourcesListerStub(channel).List(
                    api_pb2.ListPodResourcesRequest(), timeout=self.timeout
                )
        except grpc.RpcError as exc:
            raise PodResourcesUnavailable(
                f"the kubelet's PodResources API at {self.socket} did not answer: {exc.details()}"
            ) from exc
        return {
            device_id
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            for device_id in devices.device_ids
        }

    def held_uuids(self) -> set[str]:
        """The GPU and MIG UUIDs behind the held IDs (``<uuid>::<n>`` -> ``<uuid>``)."""
        return {device_id.split("::", 1)[0] for device_id in self.held_device_ids()}
