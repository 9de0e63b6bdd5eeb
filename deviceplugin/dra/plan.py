"""``fatia plan --mode dra``: the ResourceSlices a node would publish, as YAML.

The same pool and slice builders the driver uses (:mod:`.pool`, :mod:`.slices`), run
offline against the GPUs NVML (or the simulator) reports. Every GPU the pool offers as MIG
is shown as it will be once fatia has switched MIG on; instances that already exist on
the GPUs are treated as fatia's driver would treat them at its first start: someone
else's, so placements overlapping them are not offered. The objects carry no owner
reference (that needs the Node's UID); otherwise they are what the API server receives,
so ``kubectl apply --dry-run=server -f -`` checks them.

Exit status: 0, or 1 when the pool config has errors (printed to stderr, one per GPU;
the slices still show the GPUs that have none).
"""

from __future__ import annotations

import sys

import yaml

from deviceplugin.config.schema import Config
from deviceplugin.dra.devices import pool_model
from deviceplugin.dra.pool import plan_pool
from deviceplugin.dra.slices import resource_slices
from mig.inventory import Inventory
from mig.nvml import NVML_FAILURES, Nvml


class _NoAliases(yaml.SafeDumper):
    """Shared values (every device's driver version) written out each time, not as anchors."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def cuda_version(nvml: Nvml) -> int | None:
    """NVML's CUDA driver version, or ``None`` where the driver does not say."""
    try:
        return int(nvml.nvmlSystemGetCudaDriverVersion())
    except NVML_FAILURES:
        return None


def print_plan(inventory: Inventory, config: Config, *, nvml: Nvml, node_name: str = "plan") -> int:
    pool = plan_pool(inventory, config)
    model = pool_model(inventory, pool, cuda_version=cuda_version(nvml))
    slices = resource_slices(model, node_name=node_name, generation=1)
    sys.stdout.write(yaml.dump_all(slices, Dumper=_NoAliases, sort_keys=False, explicit_start=True))
    for error in pool.errors:
        print(f"fatia plan: {error}", file=sys.stderr)
    return 1 if pool.errors else 0
