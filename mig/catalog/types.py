"""The shapes of the catalog: NVML's MIG enums, a GPU-instance profile, a GPU model."""

from __future__ import annotations

from dataclasses import dataclass

# NVML GPU-instance profile enum (NVML_GPU_INSTANCE_PROFILE_*, nvml.h of NVML API 13). Our
# own copy: fatia walks the enum to NVML's end (INVALID_ARGUMENT), so nothing depends on
# the NVML_GPU_INSTANCE_PROFILE_COUNT of whichever pynvml is installed.
GI_1_SLICE = 0
GI_2_SLICE = 1
GI_3_SLICE = 2
GI_4_SLICE = 3
GI_7_SLICE = 4
GI_8_SLICE = 5
GI_6_SLICE = 6
GI_1_SLICE_REV1 = 7  # "+me": at least one media engine
GI_2_SLICE_REV1 = 8
GI_1_SLICE_REV2 = 9  # one compute slice with twice the memory (1g.10gb on A100-40GB)
GI_1_SLICE_GFX = 10  # "+gfx"
GI_2_SLICE_GFX = 11
GI_4_SLICE_GFX = 12
GI_1_SLICE_NO_ME = 13  # "-me"
GI_2_SLICE_NO_ME = 14
GI_1_SLICE_ALL_ME = 15  # "+me.all": every media engine; only -me profiles may sit beside it
GI_2_SLICE_ALL_ME = 16
GI_3_SLICE_GFX = 17
GI_PROFILE_COUNT = 0x12

ALL_ME_ENUMS = frozenset({GI_1_SLICE_ALL_ME, GI_2_SLICE_ALL_ME})
NO_ME_ENUMS = frozenset({GI_1_SLICE_NO_ME, GI_2_SLICE_NO_ME})

# NVML compute-instance profile enum (NVML_COMPUTE_INSTANCE_PROFILE_*); its info.id is the
# enum value on every GPU seen (`nvidia-smi mig -lcip`).
CI_1_SLICE = 0
CI_2_SLICE = 1
CI_3_SLICE = 2
CI_4_SLICE = 3
CI_7_SLICE = 4
CI_8_SLICE = 5
CI_6_SLICE = 6
CI_1_SLICE_REV1 = 7  # one compute slice with every SM of a double-memory 1g instance
CI_7_SLICE_NVL = 8  # seven slices, "perf optimized for multi-GPU use"
CI_PROFILE_COUNT = 9
CI_ENGINE_PROFILE_SHARED = 0

# Compute-instance enum by compute-slice count.
CI_ENUM_BY_SLICES = {1: CI_1_SLICE, 2: CI_2_SLICE, 3: CI_3_SLICE, 4: CI_4_SLICE, 7: CI_7_SLICE}

# nvmlDeviceGetArchitecture values.
ARCH_AMPERE = 7
ARCH_HOPPER = 9
ARCH_BLACKWELL = 10


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
    memory_slices: int  # 8 on A100/H100/B200-class boards, 4 on A30 and RTX PRO 6000
    nvlink: str  # "switch" (all GPUs of the board), "pairs" (bridged pairs) or "none"
    mig_mode_needs_reset: bool  # Ampere: the driver resets the GPU to change MIG mode
    profiles: tuple[GpuInstanceProfile, ...]
    nvl_compute_profile: bool = False  # its 7g instances also offer CI 7_SLICE_NVL

    def profile(self, name: str) -> GpuInstanceProfile | None:
        return next((p for p in self.profiles if p.name == name), None)

    @property
    def compute_slices(self) -> int:
        return max(p.slices for p in self.profiles)
