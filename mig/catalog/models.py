"""Every MIG-capable data-centre GPU NVIDIA documents, with its GPU-instance profiles.

Facts, not policy. Sources, by tag (the reference is ``reference/mig-hardware.md``):

- **UG**: NVIDIA's MIG user guide (supported-gpus, supported-mig-profiles: names, memory
  and SM fractions, engines, copy engines, instance counts; getting-started: the
  ``nvidia-smi mig -lgipp`` placements of A100).
- **lgip**: ``nvidia-smi mig -lgip/-lgipp`` outputs users posted (ids, SMs, GiB), as
  collected in the reference (A100, A30, H100, H100 NVL, H200, GH200 144G, B200, GB200)
  and, for RTX PRO 6000 Blackwell, a full ``-lgip`` table.
- **inferred**: not observed; derived from the same family (ids and placements of the
  8-slot A100/H100 rule on H200, GH200, B200, GB200; SM counts of 3g/4g/7g on B200 and
  GB200 as multiples of the 1g; memory of unobserved profiles from the observed ones).
  A real agent never relies on these: it reads the profile table from NVML.

Memory is NVML's ``memorySizeMB`` (MiB); the GiB figures nvidia-smi prints drift with the
driver by a few per cent.
"""

from __future__ import annotations

from collections.abc import Mapping

from mig.catalog.types import (
    ARCH_AMPERE,
    ARCH_BLACKWELL,
    ARCH_HOPPER,
    GI_1_SLICE,
    GI_1_SLICE_ALL_ME,
    GI_1_SLICE_GFX,
    GI_1_SLICE_NO_ME,
    GI_1_SLICE_REV1,
    GI_1_SLICE_REV2,
    GI_2_SLICE,
    GI_2_SLICE_ALL_ME,
    GI_2_SLICE_GFX,
    GI_2_SLICE_NO_ME,
    GI_2_SLICE_REV1,
    GI_3_SLICE,
    GI_4_SLICE,
    GI_4_SLICE_GFX,
    GI_7_SLICE,
    GpuInstanceProfile,
    GpuModel,
)

Row = tuple[str, int, int, int, int, tuple[int, ...], int, int, int, int, int, int, int, int]


def _profiles(rows: list[Row]) -> tuple[GpuInstanceProfile, ...]:
    return tuple(GpuInstanceProfile(*row) for row in rows)


# Legal starts (memory slices). 8-slot rule [UG -lgipp on A100-40GB; lgip on H100-80GB and
# H100 NVL]: 1g anywhere but slot 7, double-memory 1g and 2g on even slots (2g not at 6),
# 3g on halves, 4g and 7g at 0. 4-slot rule [lgip on A30 and RTX PRO 6000].
_ONE_TO_SIX = (0, 1, 2, 3, 4, 5, 6)
_EVEN = (0, 2, 4, 6)
_TWO_SLICE = (0, 2, 4)
_HALVES = (0, 4)
_FOUR = (0, 1, 2, 3)
_TWO_OF_FOUR = (0, 2)

# The 8-slot family shares its enums, ids, counts and placements [lgip]:
# key: enum, id, max, size, starts, slices
_EIGHT_SLOT_LAYOUT = {
    "1g": (GI_1_SLICE, 19, 7, 1, _ONE_TO_SIX, 1),
    "1g+me": (GI_1_SLICE_REV1, 20, 1, 1, _ONE_TO_SIX, 1),
    "1g2": (GI_1_SLICE_REV2, 15, 4, 2, _EVEN, 1),
    "2g": (GI_2_SLICE, 14, 3, 2, _TWO_SLICE, 2),
    "3g": (GI_3_SLICE, 9, 2, 4, _HALVES, 3),
    "4g": (GI_4_SLICE, 5, 1, 4, (0,), 4),
    "7g": (GI_7_SLICE, 0, 1, 8, (0,), 7),
}

# Copy engines and (NVDEC, NVENC, JPEG, OFA) of each 8-slot profile, by architecture
# [UG tables 6 (A100), 7, 8 and H100 94/96GB (H100, H200, GH200), 9 (B200, GB200)]:
# key: Ampere, Hopper, Blackwell
_Engines = tuple[int, tuple[int, int, int, int]]
_ENGINES_COLUMN = {ARCH_AMPERE: 0, ARCH_HOPPER: 1, ARCH_BLACKWELL: 2}
_EIGHT_SLOT_ENGINES: dict[str, tuple[_Engines, _Engines, _Engines]] = {
    "1g": ((1, (0, 0, 0, 0)), (1, (1, 0, 1, 0)), (2, (1, 0, 1, 0))),
    "1g+me": ((1, (1, 0, 1, 1)), (1, (1, 0, 1, 1)), (2, (1, 0, 1, 1))),
    "1g2": ((1, (1, 0, 0, 0)), (1, (1, 0, 1, 0)), (2, (1, 0, 1, 0))),
    "2g": ((2, (1, 0, 0, 0)), (2, (2, 0, 2, 0)), (3, (1, 0, 1, 0))),
    "3g": ((3, (2, 0, 0, 0)), (3, (3, 0, 3, 0)), (6, (1, 0, 1, 0))),
    "4g": ((4, (2, 0, 0, 0)), (4, (4, 0, 4, 0)), (8, (1, 0, 1, 0))),
    "7g": ((7, (5, 0, 1, 1)), (8, (7, 0, 7, 1)), (16, (1, 0, 1, 1))),
}


def _eight_slot(
    architecture: int,
    names: tuple[str, str, str, str],
    mib: tuple[int, int, int, int],
    sms: Mapping[str, int],
) -> tuple[GpuInstanceProfile, ...]:
    """A model of the 8-slot family (A100, H100, H200, GH200, B200, GB200).

    Per model it differs in the names and memory of its 1g, double-memory 1g (2 memory
    slices, as the 2g), 3g (4 slices, as the 4g) and 7g (all 8), and in SMs per profile;
    the 1g+me has the 1g's SMs and memory. The engines are its architecture's.
    """
    one, double, half, full = names
    name = {
        "1g": one,
        "1g+me": f"{one}+me",
        "1g2": double,
        "2g": f"2g.{double[3:]}",
        "3g": half,
        "4g": f"4g.{half[3:]}",
        "7g": full,
    }
    memory = {"1g": mib[0], "1g2": mib[1], "2g": mib[1], "3g": mib[2], "4g": mib[2], "7g": mib[3]}
    rows: list[Row] = []
    for key, (enum, pid, count, size, starts, slices) in _EIGHT_SLOT_LAYOUT.items():
        base = "1g" if key == "1g+me" else key
        ces, engines = _EIGHT_SLOT_ENGINES[key][_ENGINES_COLUMN[architecture]]
        rows.append(
            (name[key], enum, pid, count, size, starts, slices, sms[base], ces, *engines, memory[base])
        )
    return _profiles(rows)


# A100-40GB [UG table 6, lgip; SMs of 1g/3g/7g observed, the rest per slice]; A100-80GB [UG:
# as 40GB with the memory doubled; lgip GiB of 1g/2g/3g]
_A100_SMS = {"1g": 14, "1g2": 14, "2g": 28, "3g": 42, "4g": 56, "7g": 98}
_A100_40GB = _eight_slot(
    ARCH_AMPERE, ("1g.5gb", "1g.10gb", "3g.20gb", "7g.40gb"), (4864, 9856, 19968, 40192), _A100_SMS
)
_A100_80GB = _eight_slot(
    ARCH_AMPERE, ("1g.10gb", "1g.20gb", "3g.40gb", "7g.80gb"), (9728, 19968, 40192, 81152), _A100_SMS
)

# name, enum, id, max, size, starts, slices, SMs, CE, DEC, ENC, JPEG, OFA, MiB
# A30-24GB [UG A30 table; lgip on driver 535: ids, SMs, GiB, engines]. No NVENC on A30;
# nvidia-smi shows one NVDEC on 1g.6gb where the guide says none.
_A30 = _profiles(
    [
        ("1g.6gb", GI_1_SLICE, 14, 4, 1, _FOUR, 1, 14, 1, 1, 0, 0, 0, 5952),
        ("1g.6gb+me", GI_1_SLICE_REV1, 21, 1, 1, _FOUR, 1, 14, 1, 1, 0, 1, 1, 5952),
        ("2g.12gb", GI_2_SLICE, 5, 2, 2, _TWO_OF_FOUR, 2, 28, 2, 2, 0, 0, 0, 11968),
        ("2g.12gb+me", GI_2_SLICE_REV1, 6, 1, 2, _TWO_OF_FOUR, 2, 28, 2, 2, 0, 1, 1, 11968),
        ("4g.24gb", GI_4_SLICE, 0, 1, 4, (0,), 4, 56, 4, 4, 0, 1, 1, 24064),
    ]
)

# SMs of the 132-SM Hopper (SXM5, NVL, H200, GH200) [lgip]; the PCIe part has 114 SMs at most
# (a DRA-driver log of a ~79 GiB GPU), per profile [inferred] in proportion.
_H100_SMS = {"1g": 16, "1g2": 26, "2g": 32, "3g": 60, "4g": 64, "7g": 132}
_H100_PCIE_SMS = {"1g": 14, "1g2": 22, "2g": 28, "3g": 52, "4g": 56, "7g": 114}
_H100_80GB_NAMES = ("1g.10gb", "1g.20gb", "3g.40gb", "7g.80gb")
_H100_80GB_MIB = (9984, 20096, 40448, 81152)
_H100_80GB = _eight_slot(ARCH_HOPPER, _H100_80GB_NAMES, _H100_80GB_MIB, _H100_SMS)
_H100_PCIE = _eight_slot(ARCH_HOPPER, _H100_80GB_NAMES, _H100_80GB_MIB, _H100_PCIE_SMS)
_H100_94GB = _eight_slot(
    ARCH_HOPPER, ("1g.12gb", "1g.24gb", "3g.47gb", "7g.94gb"), (11008, 22144, 47488, 95360), _H100_SMS
)
# H100 96GB on GH200 (and H20) [UG names and counts; memory inferred from the 94GB part]
_H100_96GB = _eight_slot(
    ARCH_HOPPER, ("1g.12gb", "1g.24gb", "3g.48gb", "7g.96gb"), (11264, 22656, 48640, 97536), _H100_SMS
)
_H200 = _eight_slot(
    ARCH_HOPPER, ("1g.18gb", "1g.35gb", "3g.71gb", "7g.141gb"), (16384, 33024, 71168, 143360), _H100_SMS
)
# GH200 144G HBM3e [lgip of 1g.18gb and 1g.36gb (ids 19/20/15/14, SMs, GiB); rest inferred]
_GH200_144GB = _eight_slot(
    ARCH_HOPPER, ("1g.18gb", "1g.36gb", "3g.72gb", "7g.144gb"), (17920, 36096, 72704, 146432), _H100_SMS
)

# B200 180GB [UG table 9: engines, copy engines, counts; lgip: ids 19/20/15/14, SMs of
# 1g/1g.45gb/2g, GiB of 1g/1g.45gb; ids 9/5/0, SMs and memory of 3g/4g/7g inferred]
_B200 = _eight_slot(
    ARCH_BLACKWELL,
    ("1g.23gb", "1g.45gb", "3g.90gb", "7g.180gb"),
    (22528, 45312, 90624, 181248),
    {"1g": 18, "1g2": 30, "2g": 36, "3g": 54, "4g": 72, "7g": 126},
)
# GB200 186GB: the least certain table. Names as mig-parted's GB200 configs and a user's
# lgip (1g.23gb, 1g.47gb, 2g.47gb, 3g.93gb); another board and driver report 1g.24gb. SMs
# of 1g/1g.47gb/2g observed (18/32/38); everything else inferred from B200.
_GB200 = _eight_slot(
    ARCH_BLACKWELL,
    ("1g.23gb", "1g.47gb", "3g.93gb", "7g.186gb"),
    (23040, 46592, 93184, 186368),
    {"1g": 18, "1g2": 32, "2g": 38, "3g": 56, "4g": 76, "7g": 136},
)

# RTX PRO 6000 Blackwell (Server, Workstation and Max-Q editions, 96GB) [UG table 11; a full
# lgip on the workstation edition: ids, SMs, GiB, engines]. Four slots, its own id space,
# graphics (+gfx) and media-engine (+me.all, -me) variants.
_RTX_PRO_6000 = _profiles(
    [
        ("1g.24gb", GI_1_SLICE, 14, 4, 1, _FOUR, 1, 46, 1, 1, 1, 1, 0, 24186),
        ("1g.24gb+me", GI_1_SLICE_REV1, 21, 1, 1, _FOUR, 1, 46, 1, 1, 1, 1, 1, 24186),
        ("1g.24gb+gfx", GI_1_SLICE_GFX, 47, 4, 1, _FOUR, 1, 46, 1, 1, 1, 1, 0, 24186),
        ("1g.24gb+me.all", GI_1_SLICE_ALL_ME, 65, 1, 1, _FOUR, 1, 46, 1, 4, 4, 4, 1, 24186),
        ("1g.24gb-me", GI_1_SLICE_NO_ME, 67, 4, 1, _FOUR, 1, 46, 1, 0, 0, 0, 0, 24186),
        ("2g.48gb", GI_2_SLICE, 5, 2, 2, _TWO_OF_FOUR, 2, 94, 2, 2, 2, 2, 0, 48517),
        ("2g.48gb+gfx", GI_2_SLICE_GFX, 35, 2, 2, _TWO_OF_FOUR, 2, 94, 2, 2, 2, 2, 0, 48517),
        ("2g.48gb+me.all", GI_2_SLICE_ALL_ME, 64, 1, 2, _TWO_OF_FOUR, 2, 94, 2, 4, 4, 4, 1, 48517),
        ("2g.48gb-me", GI_2_SLICE_NO_ME, 66, 2, 2, _TWO_OF_FOUR, 2, 94, 2, 0, 0, 0, 0, 48517),
        ("4g.96gb", GI_4_SLICE, 0, 1, 4, (0,), 4, 188, 4, 4, 4, 4, 1, 97280),
        ("4g.96gb+gfx", GI_4_SLICE_GFX, 32, 1, 4, (0,), 4, 188, 4, 4, 4, 4, 1, 97280),
    ]
)


def _model(
    key: str,
    product: str,
    pci_device_id: int,
    memory_mib: int,
    architecture: int,
    profiles: tuple[GpuInstanceProfile, ...],
    nvlink: str = "switch",
    *,
    nvl_compute_profile: bool = False,
) -> GpuModel:
    capability = {ARCH_AMPERE: (8, 0), ARCH_HOPPER: (9, 0), ARCH_BLACKWELL: (10, 0)}[architecture]
    slices = max(p.size + max(p.starts) for p in profiles)
    return GpuModel(
        key=key,
        product=product,
        pci_device_id=pci_device_id,
        memory_mib=memory_mib,
        compute_capability=(12, 0) if slices == 4 and architecture == ARCH_BLACKWELL else capability,
        architecture=architecture,
        memory_slices=slices,
        nvlink=nvlink,
        mig_mode_needs_reset=architecture == ARCH_AMPERE,
        profiles=profiles,
        nvl_compute_profile=nvl_compute_profile,
    )


# Products: nvmlDeviceGetName as drivers report it; PCI device ids from mig-parted's
# device filters and the reference's table (0xDDDDVVVV).
# key, product, PCI device id, memory MiB, architecture, profiles, NVLink (default: switch)
MODELS: dict[str, GpuModel] = {
    m.key: m
    for m in (
        _model("a100-40gb", "NVIDIA A100-SXM4-40GB", 0x20B010DE, 40960, ARCH_AMPERE, _A100_40GB),
        _model(
            "a100-pcie-40gb", "NVIDIA A100-PCIE-40GB", 0x20F110DE, 40960, ARCH_AMPERE, _A100_40GB, "pairs"
        ),
        _model("a100-80gb", "NVIDIA A100-SXM4-80GB", 0x20B210DE, 81920, ARCH_AMPERE, _A100_80GB),
        _model(
            "a100-pcie-80gb", "NVIDIA A100 80GB PCIe", 0x20B510DE, 81920, ARCH_AMPERE, _A100_80GB, "pairs"
        ),
        _model("a30", "NVIDIA A30", 0x20B710DE, 24576, ARCH_AMPERE, _A30, "none"),
        _model("h100-80gb", "NVIDIA H100 80GB HBM3", 0x233010DE, 81559, ARCH_HOPPER, _H100_80GB),
        _model("h100-pcie", "NVIDIA H100 PCIe", 0x233110DE, 81559, ARCH_HOPPER, _H100_PCIE, "pairs"),
        _model("h100-nvl", "NVIDIA H100 NVL", 0x232110DE, 95830, ARCH_HOPPER, _H100_94GB, "pairs"),
        _model("h200", "NVIDIA H200", 0x233510DE, 143771, ARCH_HOPPER, _H200),
        _model("h200-nvl", "NVIDIA H200 NVL", 0x233B10DE, 143771, ARCH_HOPPER, _H200, "pairs"),
        _model("gh200", "NVIDIA GH200 480GB", 0x234210DE, 97871, ARCH_HOPPER, _H100_96GB, "none"),
        _model(
            "gh200-144gb", "NVIDIA GH200 144G HBM3e", 0x234810DE, 146944, ARCH_HOPPER, _GH200_144GB, "none"
        ),
        _model("b200", "NVIDIA B200", 0x290110DE, 183359, ARCH_BLACKWELL, _B200),
        _model("gb200", "NVIDIA GB200", 0x294110DE, 189471, ARCH_BLACKWELL, _GB200, nvl_compute_profile=True),
        _model(
            "rtx-pro-6000",
            "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            0x2BB510DE,
            97887,
            ARCH_BLACKWELL,
            _RTX_PRO_6000,
            "none",
        ),
    )
}
