"""Configs and expected Node counts shared by the e2e tests.

The simulated node is ``sim:a100-40gb:1,h100-80gb:1``: GPU 0 an A100 (MIG mode
changes there wait for a GPU reset, as on real Ampere), GPU 1 an H100 (MIG mode
changes at once).
"""

from __future__ import annotations


def h100_mig(mig_devices: str) -> str:
    """GPU 1 (H100) partitioned into ``mig_devices`` (a YAML flow mapping's body), GPU 0 whole."""
    return f"version: v1\ngpus:\n  - devices: [1]\n    mig-devices: {{{mig_devices}}}\n"


# GPU 1 partitioned, GPU 0 whole: no reset needed.
H100_MIG = h100_mig("3g.40gb: 1, 1g.10gb: 2")
H100_MIG_COUNTS = {"nvidia.com/gpu": 1, "nvidia.com/mig-3g.40gb": 1, "nvidia.com/mig-1g.10gb": 2}

# The same GPU repartitioned: the 3g.40gb gives way to more 1g.10gb.
H100_MIG_EDITED = h100_mig("1g.10gb: 7")
H100_MIG_EDITED_COUNTS = {"nvidia.com/gpu": 1, "nvidia.com/mig-3g.40gb": 0, "nvidia.com/mig-1g.10gb": 7}

# Impossible: an H100 has room for two 3g.40gb at most.
H100_IMPOSSIBLE = h100_mig("3g.40gb: 3")

WHOLE_COUNTS = {"nvidia.com/gpu": 2}


def a100_mig(strategy: str | None = None) -> str:
    """GPU 0 (A100) partitioned, GPU 1 whole; optionally a deviceListStrategy."""
    text = """\
version: v1
gpus:
  - devices: [0]
    mig-devices: {1g.5gb: 2, 2g.10gb: 1, 3g.20gb: 1}
"""
    if strategy is not None:
        text += f"plugin:\n  deviceListStrategy: {strategy}\n"
    return text


A100_MIG_COUNTS = {
    "nvidia.com/gpu": 1,
    "nvidia.com/mig-1g.5gb": 2,
    "nvidia.com/mig-2g.10gb": 1,
    "nvidia.com/mig-3g.20gb": 1,
}

# The same A100 as two 3g.20gb: every 1g.5gb and the 2g.10gb are destroyed.
A100_TWO_HALVES = """\
version: v1
gpus:
  - devices: [0]
    mig-devices: {3g.20gb: 2}
"""
A100_TWO_HALVES_COUNTS = {
    "nvidia.com/gpu": 1,
    "nvidia.com/mig-1g.5gb": 0,
    "nvidia.com/mig-2g.10gb": 0,
    "nvidia.com/mig-3g.20gb": 2,
}
