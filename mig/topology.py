"""How well each pair of GPUs is linked, as GetPreferredAllocation weighs it.

A pair scores by the closest common ancestor NVML reports for it (one board, one PCIe
switch, several switches, a host bridge, a NUMA node, across NUMA nodes), plus a bonus
when NVLink joins the two, with the weights of NVIDIA's gpuallocator. A pair NVML cannot
read is left out rather than failing the whole inventory.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import mig.nvml as nv
from mig.nvml import NVML_FAILURES, Nvml

NVLINK_SCORE = 100
PCIE_SCORES = {
    nv.NVML_TOPOLOGY_INTERNAL: 60,
    nv.NVML_TOPOLOGY_SINGLE: 50,
    nv.NVML_TOPOLOGY_MULTIPLE: 40,
    nv.NVML_TOPOLOGY_HOSTBRIDGE: 30,
    nv.NVML_TOPOLOGY_NODE: 20,
    nv.NVML_TOPOLOGY_SYSTEM: 10,
}


def read_topology(nvml: Nvml, indices: Sequence[int]) -> dict[tuple[int, int], int]:
    """``(a, b) -> score`` for every ordered pair of the GPUs ``indices`` that NVML answers for."""
    scores: dict[tuple[int, int], int] = {}
    for a, b in itertools.permutations(indices, 2):
        if (b, a) in scores:
            scores[(a, b)] = scores[(b, a)]
            continue
        try:
            ha = nvml.nvmlDeviceGetHandleByIndex(a)
            hb = nvml.nvmlDeviceGetHandleByIndex(b)
            level = nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb)
            nvlink = nvml.nvmlDeviceGetP2PStatus(ha, hb, nv.NVML_P2P_CAPS_INDEX_NVLINK)
        except NVML_FAILURES:
            continue
        score = PCIE_SCORES.get(level, 0)
        if nvlink == nv.NVML_P2P_STATUS_OK:
            score += NVLINK_SCORE
        scores[(a, b)] = score
    return scores
