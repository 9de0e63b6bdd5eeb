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

from deviceplugin.cluster.kubeapi import KubeApi, path


class ResourceClaimReader:
    def __init__(self, api: KubeApi) -> None:
        self._api = api

    def get(self, namespace: str, name: str) -> Mapping[str, Any]:
        return self._api.get(
            path("apis", "resource.k8s.io", "v1", "namespaces", namespace, "resourceclaims", name)
        )
