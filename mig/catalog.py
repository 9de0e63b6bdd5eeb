"""The GPU models fatia knows, with their MIG profile tables.

These are facts about hardware, not fatia policy: product names, memory, PCI
device ids, and for every MIG GPU-instance profile its NVML enum, its per-model
``info.id``, how many instances fit, how many memory slices it occupies and at
which slices it may start. The simulated NVML serves exactly these tables, and
they stand in for a driver that lists no profiles while MIG is off.

The agent itself never trusts this table for a real GPU: it reads the profiles
and placements from NVML (see :mod:`mig.inventory`), so a GPU that is not
listed here still works.

Sources: NVIDIA's MIG user guide (profile tables and ``nvidia-smi mig -lgipp``
outputs) and observed ``-lgip`` outputs; where placements were not observed
(H200) the 8-slot rule of the A100/H100 family is assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

# NVML GPU-instance profile enum (NVML_GPU_INSTANCE_PROFILE_*).
GI_1_SLICE = 0
GI_2_SLICE = 1
GI_3_SLICE = 2
GI_4_SLICE = 3
GI_7_SLICE = 4
GI_8_SLICE = 5
GI_6_SLICE = 6
GI_1_SLICE_REV1 = 7
GI_2_SLICE_REV1 = 8
GI_1_SLICE_REV2 = 9
GI_PROFILE_COUNT = 0x12

# NVML compute-instance profile enum (NVML_COMPUTE_INSTANCE_PROFILE_*).
CI_1_SLICE = 0
CI_2_SLICE = 1
CI_3_SLICE = 2
CI_4_SLICE = 3
CI_7_SLICE = 4
CI_8_SLICE = 5
CI_6_SLICE = 6
CI_1_SLICE_REV1 = 7
CI_PROFILE_COUNT = 9
CI_ENGINE_PROFILE_SHARED = 0

# Compute-instance enum by compute-slice count.
CI_ENUM_BY_SLICES = {1: CI_1_SLICE, 2: CI_2_SLICE, 3: CI_3_SLICE, 4: CI_4_SLICE, 7: CI_7_SLICE}

ARCH_AMPERE = 7
ARCH_HOPPER = 9


@dataclass(frozen=True)
class GpuInstanceProfile:
    """One MIG GPU-instance profile of one GPU model."""

    name: str  # mig-parted name, e.g. "1g.5gb" or "1g.5gb+me"
    enum: int  # NVML_GPU_INSTANCE_PROFILE_* value
    id: int  # nvmlGpuInstanceProfileInfo_t.id on this model
    max_count: int  # instanceCount
    size: int  # memory slices occupied (placement size)
    starts: tuple[int, ...]  # memory slices at which an instance may start
    slices: int  # compute slices (sliceCount)
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int
    memory_mib: int

    @property
    def placements(self) -> tuple[tuple[int, int], ...]:
        """Every legal ``(start, size)``, as NVML's possible placements."""
        return tuple((start, self.size) for start in self.starts)


@dataclass(frozen=True)
class GpuModel:
    """A GPU model as the simulator presents it and the validator knows it."""

    key: str  # the name used in ``sim:SPEC``, e.g. "a100-40gb"
    product: str  # nvmlDeviceGetName
    pci_device_id: int  # 0xDDDDVVVV
    memory_mib: int
    compute_capability: tuple[int, int]
    architecture: int
    memory_slices: int  # 8 on A100/H100-class boards, 4 on A30
    nvlink: str  # "switch" (all GPUs of the board), "pairs" (bridged pairs) or "none"
    mig_mode_needs_reset: bool  # True on Ampere: a MIG mode change waits for a GPU reset
    profiles: tuple[GpuInstanceProfile, ...]

    def profile(self, name: str) -> GpuInstanceProfile | None:
        return next((p for p in self.profiles if p.name == name), None)

    @property
    def compute_slices(self) -> int:
        return max(p.slices for p in self.profiles)


def _profiles(rows: list[tuple]) -> tuple[GpuInstanceProfile, ...]:
    return tuple(GpuInstanceProfile(*row) for row in rows)


_ONE_TO_SIX = (0, 1, 2, 3, 4, 5, 6)
_EVEN = (0, 2, 4, 6)
_TWO_SLICE = (0, 2, 4)
_HALVES = (0, 4)

# name, enum, id, max, size, starts, slices, SMs, CE, DEC, ENC, JPEG, OFA, MiB
_A100_40GB = _profiles(
    [
        ("1g.5gb", GI_1_SLICE, 19, 7, 1, _ONE_TO_SIX, 1, 14, 1, 0, 0, 0, 0, 4864),
        ("1g.5gb+me", GI_1_SLICE_REV1, 20, 1, 1, _ONE_TO_SIX, 1, 14, 1, 1, 0, 1, 1, 4864),
        ("1g.10gb", GI_1_SLICE_REV2, 15, 4, 2, _EVEN, 1, 14, 1, 1, 0, 0, 0, 9856),
        ("2g.10gb", GI_2_SLICE, 14, 3, 2, _TWO_SLICE, 2, 28, 2, 1, 0, 0, 0, 9856),
        ("3g.20gb", GI_3_SLICE, 9, 2, 4, _HALVES, 3, 42, 3, 2, 0, 0, 0, 19968),
        ("4g.20gb", GI_4_SLICE, 5, 1, 4, (0,), 4, 56, 4, 2, 0, 0, 0, 19968),
        ("7g.40gb", GI_7_SLICE, 0, 1, 8, (0,), 7, 98, 7, 5, 0, 1, 1, 40192),
    ]
)

_A100_80GB = _profiles(
    [
        ("1g.10gb", GI_1_SLICE, 19, 7, 1, _ONE_TO_SIX, 1, 14, 1, 0, 0, 0, 0, 9728),
        ("1g.10gb+me", GI_1_SLICE_REV1, 20, 1, 1, _ONE_TO_SIX, 1, 14, 1, 1, 0, 1, 1, 9728),
        ("1g.20gb", GI_1_SLICE_REV2, 15, 4, 2, _EVEN, 1, 14, 1, 1, 0, 0, 0, 19968),
        ("2g.20gb", GI_2_SLICE, 14, 3, 2, _TWO_SLICE, 2, 28, 2, 1, 0, 0, 0, 19968),
        ("3g.40gb", GI_3_SLICE, 9, 2, 4, _HALVES, 3, 42, 3, 2, 0, 0, 0, 40192),
        ("4g.40gb", GI_4_SLICE, 5, 1, 4, (0,), 4, 56, 4, 2, 0, 0, 0, 40192),
        ("7g.80gb", GI_7_SLICE, 0, 1, 8, (0,), 7, 98, 7, 5, 0, 1, 1, 81152),
    ]
)

_A30 = _profiles(
    [
        ("1g.6gb", GI_1_SLICE, 14, 4, 1, (0, 1, 2, 3), 1, 14, 1, 1, 0, 0, 0, 5952),
        ("1g.6gb+me", GI_1_SLICE_REV1, 21, 1, 1, (0, 1, 2, 3), 1, 14, 1, 1, 1, 1, 1, 5952),
        ("2g.12gb", GI_2_SLICE, 5, 2, 2, (0, 2), 2, 28, 2, 2, 0, 0, 0, 11968),
        ("2g.12gb+me", GI_2_SLICE_REV1, 6, 1, 2, (0, 2), 2, 28, 2, 2, 1, 1, 1, 11968),
        ("4g.24gb", GI_4_SLICE, 0, 1, 4, (0,), 4, 56, 4, 4, 1, 1, 1, 24000),
    ]
)


def _hopper(mem: dict[str, tuple[str, int]]) -> tuple[GpuInstanceProfile, ...]:
    """H100/H200 tables share enums, ids, placements and SM counts; names and memory differ."""
    n = {key: name for key, (name, _) in mem.items()}
    m = {key: mib for key, (_, mib) in mem.items()}
    return _profiles(
        [
            (n["1g"], GI_1_SLICE, 19, 7, 1, _ONE_TO_SIX, 1, 16, 1, 1, 0, 1, 0, m["1g"]),
            (n["1g"] + "+me", GI_1_SLICE_REV1, 20, 1, 1, _ONE_TO_SIX, 1, 16, 1, 1, 0, 1, 1, m["1g"]),
            (n["1g2"], GI_1_SLICE_REV2, 15, 4, 2, _EVEN, 1, 26, 1, 1, 0, 1, 0, m["1g2"]),
            (n["2g"], GI_2_SLICE, 14, 3, 2, _TWO_SLICE, 2, 32, 2, 2, 0, 2, 0, m["2g"]),
            (n["3g"], GI_3_SLICE, 9, 2, 4, _HALVES, 3, 60, 3, 3, 0, 3, 0, m["3g"]),
            (n["4g"], GI_4_SLICE, 5, 1, 4, (0,), 4, 64, 4, 4, 0, 4, 0, m["4g"]),
            (n["7g"], GI_7_SLICE, 0, 1, 8, (0,), 7, 132, 8, 7, 0, 7, 1, m["7g"]),
        ]
    )


MODELS: dict[str, GpuModel] = {
    model.key: model
    for model in (
        GpuModel(
            "a100-40gb",
            "NVIDIA A100-SXM4-40GB",
            0x20B010DE,
            40960,
            (8, 0),
            ARCH_AMPERE,
            8,
            "switch",
            True,
            _A100_40GB,
        ),
        GpuModel(
            "a100-80gb",
            "NVIDIA A100-SXM4-80GB",
            0x20B210DE,
            81920,
            (8, 0),
            ARCH_AMPERE,
            8,
            "switch",
            True,
            _A100_80GB,
        ),
        GpuModel("a30", "NVIDIA A30", 0x20B710DE, 24576, (8, 0), ARCH_AMPERE, 4, "none", True, _A30),
        GpuModel(
            "h100-80gb",
            "NVIDIA H100 80GB HBM3",
            0x233010DE,
            81559,
            (9, 0),
            ARCH_HOPPER,
            8,
            "switch",
            False,
            _hopper(
                {
                    "1g": ("1g.10gb", 9984),
                    "1g2": ("1g.20gb", 20096),
                    "2g": ("2g.20gb", 20096),
                    "3g": ("3g.40gb", 40448),
                    "4g": ("4g.40gb", 40448),
                    "7g": ("7g.80gb", 81152),
                }
            ),
        ),
        GpuModel(
            "h100-nvl",
            "NVIDIA H100 NVL",
            0x232110DE,
            95830,
            (9, 0),
            ARCH_HOPPER,
            8,
            "pairs",
            False,
            _hopper(
                {
                    "1g": ("1g.12gb", 11008),
                    "1g2": ("1g.24gb", 22144),
                    "2g": ("2g.24gb", 22144),
                    "3g": ("3g.47gb", 47488),
                    "4g": ("4g.47gb", 47488),
                    "7g": ("7g.94gb", 95360),
                }
            ),
        ),
        GpuModel(
            "h200",
            "NVIDIA H200",
            0x233510DE,
            143771,
            (9, 0),
            ARCH_HOPPER,
            8,
            "switch",
            False,
            _hopper(
                {
                    "1g": ("1g.18gb", 16384),
                    "1g2": ("1g.35gb", 33024),
                    "2g": ("2g.35gb", 33024),
                    "3g": ("3g.71gb", 71168),
                    "4g": ("4g.71gb", 71168),
                    "7g": ("7g.141gb", 143360),
                }
            ),
        ),
    )
}


def model_for_product(product: str) -> GpuModel | None:
    """The catalog entry whose product name NVML reports, if fatia knows it."""
    return next((m for m in MODELS.values() if m.product == product), None)
