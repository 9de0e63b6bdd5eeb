"""``fatia export``: the node's current layout, written as a fatia config.

Applying the exported config to the same node changes nothing. GPUs with the
same layout share one rule; when every GPU has the same layout the rule says
``devices: all``. Lost GPUs and GPUs without MIG get no rule, so fatia leaves
them as they are.
"""

from __future__ import annotations

import yaml

from mig.inventory import Inventory
from mig.layout import profile_counts


def export_config(inventory: Inventory) -> str:
    groups: dict[tuple[bool, tuple[tuple[str, int], ...]], list[int]] = {}
    for gpu in inventory.gpus:
        if not gpu.usable or not gpu.mig_capable:
            continue
        counts = tuple(sorted(profile_counts(gpu.layout).items())) if gpu.mig_enabled else ()
        groups.setdefault((gpu.mig_enabled, counts), []).append(gpu.index)
    # "all" only when the rule covers every GPU: a lost GPU or one without MIG would
    # otherwise be matched too (and a MIG rule on a GPU without MIG is a plan error).
    every = [g.index for g in inventory.gpus]
    rules = []
    for (enabled, counts), indices in groups.items():
        rule: dict[str, object] = {"devices": "all" if indices == every else indices}
        rule["mig-enabled"] = enabled
        if enabled:
            rule["mig-devices"] = dict(counts)
        rules.append(rule)
    return yaml.safe_dump({"version": "v1", "gpus": rules}, sort_keys=False)
