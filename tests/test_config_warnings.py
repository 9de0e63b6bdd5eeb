"""A config that mixes MIG profiles under ``deviceListStrategy: envvar`` is warned about.

The kubelet merges the environments of the Allocate answers of a container's resources
and keeps one ``NVIDIA_VISIBLE_DEVICES``, so such a container gets one device of the two
it asked for (shown against the real kubelet in ``tests/e2e``). ``fatia plan`` and the
agent say so; the config stays valid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deviceplugin.config.schema import parse_config
from deviceplugin.plan.warnings import config_warnings
from deviceplugin.testing.daemon import fatia_cli

TWO_PROFILES = "version: v1\ngpus: [{devices: all, mig-devices: {1g.5gb: 2, 2g.10gb: 1}}]\n"
MIG_RESOURCES = {"nvidia.com/mig-1g.5gb", "nvidia.com/mig-2g.10gb"}


@pytest.mark.parametrize(
    ("plugin", "warned"),
    [
        ("", True),
        ("plugin: {deviceListStrategy: envvar}\n", True),
        ("plugin: {deviceListStrategy: volume-mounts}\n", False),
        ("plugin: {deviceListStrategy: [envvar, cdi-cri]}\n", False),
    ],
)
def test_two_mig_profiles_under_envvar_alone_are_warned_about(plugin: str, warned: bool) -> None:
    config = parse_config(TWO_PROFILES + plugin)
    assert bool(config_warnings(config, MIG_RESOURCES)) == warned


def test_one_mig_profile_under_envvar_is_fine() -> None:
    config = parse_config("version: v1\ngpus: [{devices: all, mig-devices: {1g.5gb: 7}}]\n")
    assert config_warnings(config, {"nvidia.com/mig-1g.5gb", "nvidia.com/gpu"}) == []


def test_fatia_plan_prints_the_warning_and_still_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(TWO_PROFILES)
    done = fatia_cli("plan", "--config", str(path), "--nvml", "sim:a100-40gb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: deviceListStrategy envvar with several MIG profiles" in done.stdout
    assert "volume-mounts or cdi-cri" in done.stdout
