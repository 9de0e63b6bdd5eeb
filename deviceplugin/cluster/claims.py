"""DRA mode's reads from the API: the ResourceClaim a prepare is about.

The kubelet names a claim (namespace, name, UID) and nothing else; what was allocated
is in the claim's status. :class:`ResourceClaimReader` reads it and hands it on as the
API's JSON (``status.allocation.devices.results`` ...), which is all
:mod:`deviceplugin.dra.allocation` looks at. One read per prepare (a prepared claim is
answered from the checkpoint); API errors are raised to the caller, which fails that claim
with the message and lets the kubelet retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

READ_TIMEOUT_S = 10


class ResourceClaimReader:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._resource: Any = client.ResourceV1Api(api)  # bodies are plain dicts

    def get(self, namespace: str, name: str) -> Mapping[str, Any]:
        claim = self._resource.read_namespaced_resource_claim(
            name, namespace, _request_timeout=READ_TIMEOUT_S
        )
        raw: dict[str, Any] = self._api.sanitize_for_serialization(claim)
        return raw
