"""The GPU models fatia knows, with their MIG profile tables.

These are facts about hardware, not fatia policy: product names, memory, PCI device ids,
and for every MIG GPU-instance profile its NVML enum, its per-model ``info.id``, how many
instances fit, how many memory slices it occupies and at which slices it may start
(:mod:`mig.catalog.models` says where each fact comes from). The simulated NVML serves
exactly these tables, and they stand in for a driver that lists no profiles while MIG is
off (:func:`model_for_product` finds a table by product family).

The agent itself never trusts this table for a real GPU it can ask: it reads the profiles
and placements from NVML (see :mod:`mig.inventory`), so a GPU that is not listed here
still works once NVML lists its profiles.
"""

from mig.catalog.families import family_of, model_for_product
from mig.catalog.models import MODELS
from mig.catalog.types import (
    ALL_ME_ENUMS,
    ARCH_AMPERE,
    ARCH_BLACKWELL,
    ARCH_HOPPER,
    CI_1_SLICE,
    CI_1_SLICE_REV1,
    CI_7_SLICE,
    CI_7_SLICE_NVL,
    CI_ENGINE_PROFILE_SHARED,
    CI_ENUM_BY_SLICES,
    CI_PROFILE_COUNT,
    GI_1_SLICE,
    GI_1_SLICE_REV1,
    GI_1_SLICE_REV2,
    GI_2_SLICE,
    GI_2_SLICE_REV1,
    GI_3_SLICE,
    GI_4_SLICE,
    GI_7_SLICE,
    GI_PROFILE_COUNT,
    NO_ME_ENUMS,
    GpuInstanceProfile,
    GpuModel,
)

__all__ = [
    "ALL_ME_ENUMS",
    "ARCH_AMPERE",
    "ARCH_BLACKWELL",
    "ARCH_HOPPER",
    "CI_1_SLICE",
    "CI_1_SLICE_REV1",
    "CI_7_SLICE",
    "CI_7_SLICE_NVL",
    "CI_ENGINE_PROFILE_SHARED",
    "CI_ENUM_BY_SLICES",
    "CI_PROFILE_COUNT",
    "GI_1_SLICE",
    "GI_1_SLICE_REV1",
    "GI_1_SLICE_REV2",
    "GI_2_SLICE",
    "GI_2_SLICE_REV1",
    "GI_3_SLICE",
    "GI_4_SLICE",
    "GI_7_SLICE",
    "GI_PROFILE_COUNT",
    "MODELS",
    "NO_ME_ENUMS",
    "GpuInstanceProfile",
    "GpuModel",
    "family_of",
    "model_for_product",
]
