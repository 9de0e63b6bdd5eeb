"""The DeviceClasses of DRA mode, generated from the catalog (``daemonset/dra/deviceclasses.yaml``).

A claim names a class; the class's CEL selector picks fatia's devices by their attributes:

- ``gpu.fatia.dev``: whole GPUs (``type == "gpu"``), also serving the extended resource
  ``nvidia.com/gpu``;
- ``mig.gpu.fatia.dev``: any MIG placement (``type == "mig"``); a claim narrows it with
  its own selector (``device.attributes["gpu.fatia.dev"].profile == "1g.10gb"``);
- ``mig-<profile>.gpu.fatia.dev``: one MIG profile, serving the extended resource of the
  same name as the device-plugin mode advertises (``nvidia.com/mig-1g.10gb``; ``+`` written
  ``.``), so a pod that asks for ``nvidia.com/mig-1g.10gb: 1`` without a claim is served by
  the DRA driver on nodes in DRA mode (KEP-5004) and by the device plugin elsewhere.

``python -m deviceplugin.dra.classes > daemonset/components/dra/deviceclasses.yaml`` writes
them; a test keeps the file equal to what this module generates.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.devices import profile_slug
from deviceplugin.plan.resources import GPU_RESOURCE, mig_resource_name
from mig.catalog import MODELS

API_VERSION = "resource.k8s.io/v1"
GPU_CLASS = DRIVER_NAME
MIG_CLASS = f"mig.{DRIVER_NAME}"


def _is(kind: str) -> str:
    return f'device.driver == "{DRIVER_NAME}" && device.attributes["{DRIVER_NAME}"].type == "{kind}"'


def _class(name: str, expression: str, extended: str | None, why: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": expression}}]}
    if extended is not None:
        spec["extendedResourceName"] = extended
    return {
        "apiVersion": API_VERSION,
        "kind": "DeviceClass",
        "metadata": {"name": name, "annotations": {f"{DRIVER_NAME}/description": why}},
        "spec": spec,
    }


def profile_class(profile: str) -> str:
    return f"mig-{profile_slug(profile)}.{DRIVER_NAME}"


def device_classes() -> list[dict[str, Any]]:
    classes = [
        _class(GPU_CLASS, _is("gpu"), GPU_RESOURCE, "a whole GPU"),
        _class(MIG_CLASS, _is("mig"), None, "a MIG slice of any profile; narrow it with a selector"),
    ]
    profiles = sorted({p.name for model in MODELS.values() for p in model.profiles})
    for profile in profiles:
        expression = f'{_is("mig")} && device.attributes["{DRIVER_NAME}"].profile == "{profile}"'
        classes.append(
            _class(profile_class(profile), expression, mig_resource_name(profile), f"a MIG {profile}")
        )
    return classes


def render() -> str:
    header = (
        "# Generated from the GPU catalog; do not edit. Regenerate with\n"
        "#   python -m deviceplugin.dra.classes > daemonset/components/dra/deviceclasses.yaml\n"
    )
    return header + yaml.safe_dump_all(device_classes(), sort_keys=False, explicit_start=True, width=200)


if __name__ == "__main__":
    sys.stdout.write(render())
