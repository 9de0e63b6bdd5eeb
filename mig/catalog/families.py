"""Which catalog table a product name (or PCI device id) belongs to.

Drivers name one board several ways ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe",
"NVIDIA H100 PCIe", "NVIDIA GH200 480GB", "NVIDIA H800 NVL", ...), so a product is
matched by family: its words (upper case, split at spaces, dashes and underscores) are
checked against rules from the most specific product to the least. Boards whose MIG
tables are the same as a listed model's share it: A800 (A100's), H800 (H100's), H20
(the 96GB H100's, as on GH200), H100 94GB SXM5/PCIe (H100 NVL's).
"""

from __future__ import annotations

import re

from mig.catalog.models import MODELS
from mig.catalog.types import GpuModel


def _words(product: str) -> set[str]:
    return set(re.split(r"[\s_\-]+", product.upper().strip()))


def family_of(product: str) -> str | None:
    """The catalog key whose MIG table ``product`` has, or ``None`` for an unknown product."""
    w = _words(product)
    pcie = "PCIE" in w
    if "GB200" in w:
        return "gb200"
    if "B200" in w:
        return "b200"
    if "RTX" in w and "PRO" in w and "6000" in w:
        return "rtx-pro-6000"
    if "GH200" in w:
        return "gh200-144gb" if ({"144G", "144GB", "HBM3E"} & w) else "gh200"
    if "H200" in w:
        return "h200-nvl" if "NVL" in w else "h200"
    if "H20" in w:
        return "gh200"
    if {"H100", "H800"} & w:
        if "NVL" in w or "94GB" in w:
            return "h100-nvl"
        if "96GB" in w:
            return "gh200"
        return "h100-pcie" if pcie else "h100-80gb"
    if {"A100", "A800"} & w:
        big = "80GB" in w
        return (
            ("a100-pcie-80gb" if pcie else "a100-80gb")
            if big
            else ("a100-pcie-40gb" if pcie else "a100-40gb")
        )
    if "A30" in w:
        return "a30"
    return None


def model_for_product(product: str, pci_device_id: int | None = None) -> GpuModel | None:
    """The catalog entry for a GPU: its exact product name, else its PCI device id, else
    its family; ``None`` when fatia does not know the product."""
    for model in MODELS.values():
        if model.product == product:
            return model
    if pci_device_id is not None:
        for model in MODELS.values():
            if model.pci_device_id == pci_device_id:
                return model
    key = family_of(product)
    return MODELS[key] if key else None
