"""Configs that are valid but will not do what their author likely means.

One is known: under ``deviceListStrategy: envvar`` alone, a container that asks for two
MIG profiles (``nvidia.com/mig-1g.5gb: 1`` and ``nvidia.com/mig-2g.10gb: 1``) gets only
one of them. The kubelet calls Allocate once per resource and merges the answers'
environments; both set ``NVIDIA_VISIBLE_DEVICES`` and the kubelet keeps one. Mounts and
CDI devices are merged, so ``volume-mounts`` or ``cdi-cri`` deliver both.
"""

from __future__ import annotations

from collections.abc import Iterable

from deviceplugin.config.schema import Config, DeviceListStrategy

MIG_PREFIX = "nvidia.com/mig-"


def config_warnings(config: Config, resources: Iterable[str]) -> list[str]:
    """Sentences about what ``config`` would advertise as ``resources`` that may surprise."""
    mig = sorted(name for name in resources if name.startswith(MIG_PREFIX))
    if len(mig) > 1 and config.plugin.device_list_strategy == (DeviceListStrategy.ENVVAR,):
        return [
            f"deviceListStrategy envvar with several MIG profiles ({', '.join(mig)}): a container"
            " asking for more than one of them gets only one, since the kubelet keeps a single"
            " NVIDIA_VISIBLE_DEVICES; use volume-mounts or cdi-cri for such pods"
        ]
    return []
