"""Specification of a claim's ``gpu.fatia.dev`` parameters (:mod:`deviceplugin.dra.sharing`):
what is accepted, every way it is refused with the key path, and which entry a request gets.

Claims are the API's JSON, as the kubelet's prepare reads them: the user's
``spec.devices.config`` and the scheduler's copy in ``status.allocation.devices.config``.
"""

from __future__ import annotations

from typing import Any

import pytest

from deviceplugin.dra import DRIVER_NAME
from deviceplugin.dra.sharing import ClaimSharing, Sharing, claim_sharing
from mig.errors import ConfigError

GPU_CONFIG = {"apiVersion": "gpu.fatia.dev/v1alpha1", "kind": "GpuConfig"}


def params(**sharing: Any) -> dict[str, Any]:
    return {**GPU_CONFIG, "sharing": {"strategy": "TimeSlicing", **sharing}}


def entry(
    parameters: Any, *, requests: tuple[str, ...] = (), source: str = "FromClaim", driver: str = DRIVER_NAME
) -> dict[str, Any]:
    found: dict[str, Any] = {"source": source, "opaque": {"driver": driver, "parameters": parameters}}
    if requests:
        found["requests"] = list(requests)
    return found


def claim(*entries: dict[str, Any]) -> dict[str, Any]:
    """A claim whose own config is its FromClaim entries (the scheduler copies them as they are)."""
    own = [{k: v for k, v in e.items() if k != "source"} for e in entries if e["source"] == "FromClaim"]
    return {
        "spec": {"devices": {"config": own}},
        "status": {"allocation": {"devices": {"results": [], "config": list(entries)}}},
    }


def error_of(parameters: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        claim_sharing(
            claim(entry({"driver": "other.example.com"}, driver="other.example.com"), entry(parameters))
        )
    return str(caught.value)


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["Default", "Short", "Medium", "Long"])
def test_each_interval_is_read_with_its_nvidia_smi_level(interval: str) -> None:
    sharing = claim_sharing(claim(entry(params(interval=interval)))).for_request("gpu")
    assert sharing == Sharing("TimeSlicing", interval)
    assert sharing.level == ["Default", "Short", "Medium", "Long"].index(interval)
    assert sharing.env() == ("FATIA_SHARING_STRATEGY=TimeSlicing", f"FATIA_TIMESLICE_INTERVAL={interval}")


def test_the_interval_defaults_to_default() -> None:
    assert claim_sharing(claim(entry(params()))).for_request("gpu") == Sharing("TimeSlicing", "Default")


def test_nvidias_spelling_of_the_interval_is_read_too() -> None:
    nvidia = params(timeSlicingConfig={"interval": "Medium"})
    assert claim_sharing(claim(entry(nvidia))).for_request("gpu") == Sharing("TimeSlicing", "Medium")


def test_a_gpu_config_without_sharing_sets_none() -> None:
    assert claim_sharing(claim(entry(dict(GPU_CONFIG)))).for_request("gpu") is None


def test_a_claim_without_entries_for_this_driver_has_no_sharing() -> None:
    bad_for_them = entry({"anything": 1}, driver="other.example.com")
    assert claim_sharing(claim(bad_for_them)) == ClaimSharing()
    assert claim_sharing({}) == ClaimSharing()


# -- refused, with the key path -------------------------------------------------------------------

P = "devices.config[1].opaque.parameters"  # the claim's second entry (the first is another driver's)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"kind": "GpuConfig"},
            f"{P}.apiVersion: missing; gpu.fatia.dev parameters need apiVersion: gpu.fatia.dev/v1alpha1",
        ),
        (
            {**GPU_CONFIG, "apiVersion": "resource.nvidia.com/v1beta1"},
            f"{P}.apiVersion: must be gpu.fatia.dev/v1alpha1, not 'resource.nvidia.com/v1beta1'",
        ),
        ({**GPU_CONFIG, "apiVersion": 1}, f"{P}.apiVersion: expected a string, got an integer"),
        (
            {"apiVersion": "gpu.fatia.dev/v1alpha1"},
            f"{P}.kind: missing; gpu.fatia.dev parameters need kind: GpuConfig",
        ),
        ({**GPU_CONFIG, "kind": "MigDeviceConfig"}, f"{P}.kind: must be GpuConfig, not 'MigDeviceConfig'"),
        (
            {**GPU_CONFIG, "shareing": {}},
            f"{P}.shareing: unknown key; allowed here: apiVersion, kind, sharing",
        ),
        ([1, 2], f"{P}: expected a mapping, got a list"),
        ({**GPU_CONFIG, "sharing": "TimeSlicing"}, f"{P}.sharing: expected a mapping, got a string"),
        ({**GPU_CONFIG, "sharing": {}}, f"{P}.sharing.strategy: missing; fatia shares by TimeSlicing"),
        (
            {**GPU_CONFIG, "sharing": {"strategy": "MPS", "mpsConfig": {}}},
            f"{P}.sharing.strategy: MPS is not supported by fatia (it runs no MPS control daemon); "
            "use TimeSlicing",
        ),
        (
            {**GPU_CONFIG, "sharing": {"strategy": "Exclusive"}},
            f"{P}.sharing.strategy: must be one of TimeSlicing, not 'Exclusive'",
        ),
        (
            params(replicas=4),
            f"{P}.sharing.replicas: unknown key; allowed here: strategy, interval, timeSlicingConfig",
        ),
        (
            params(interval="Fast"),
            f"{P}.sharing.interval: must be one of Default, Short, Medium, Long, not 'Fast'",
        ),
        (params(interval=3), f"{P}.sharing.interval: expected a string, got an integer"),
        (params(interval=True), f"{P}.sharing.interval: expected a string, got a boolean"),
        (
            params(interval="Long", timeSlicingConfig={"interval": "Long"}),
            f"{P}.sharing.timeSlicingConfig: the interval is already set by {P}.sharing.interval",
        ),
        (
            params(timeSlicingConfig={"interval": "Fast"}),
            f"{P}.sharing.timeSlicingConfig.interval: must be one of Default, Short, Medium, Long, "
            "not 'Fast'",
        ),
        (
            params(timeSlicingConfig={"period": 1}),
            f"{P}.sharing.timeSlicingConfig.period: unknown key; allowed here: interval",
        ),
        (params(timeSlicingConfig=[]), f"{P}.sharing.timeSlicingConfig: expected a mapping, got a list"),
    ],
)
def test_bad_parameters_are_refused_with_the_key_path(parameters: Any, message: str) -> None:
    assert error_of(parameters) == message


def test_missing_parameters_are_refused_as_a_missing_api_version() -> None:
    with pytest.raises(ConfigError, match=r"^devices\.config\[0\]\.opaque\.parameters\.apiVersion: missing"):
        claim_sharing(claim({"source": "FromClaim", "opaque": {"driver": DRIVER_NAME}}))


def test_a_class_entry_is_named_by_its_place_in_the_allocation() -> None:
    ours = entry(params(interval="Fast"), source="FromClass", requests=("gpu",))
    with pytest.raises(ConfigError) as caught:
        claim_sharing(claim(entry({}, source="FromClass", driver="x.example.com"), ours))
    assert str(caught.value).startswith(
        "status.allocation.devices.config[1].opaque.parameters.sharing.interval:"
    )


# -- which entry a request gets --------------------------------------------------------------------


def intervals(configs: ClaimSharing, *requests: str) -> list[str | None]:
    return [(s.interval if (s := configs.for_request(r)) else None) for r in requests]


def test_an_entry_applies_to_the_requests_it_lists_or_to_all() -> None:
    configs = claim_sharing(
        claim(entry(params(interval="Short")), entry(params(interval="Long"), requests=("b",)))
    )
    assert intervals(configs, "a", "b") == ["Short", "Long"]


def test_a_main_request_covers_its_subrequests_and_a_subrequest_only_itself() -> None:
    configs = claim_sharing(
        claim(
            entry(params(interval="Short"), requests=("a",)),
            entry(params(interval="Long"), requests=("b/big",)),
        )
    )
    assert intervals(configs, "a", "a/small", "b/big", "b/small", "c") == [
        "Short",
        "Short",
        "Long",
        None,
        None,
    ]


def test_the_claims_entries_override_the_class_s_whatever_their_order() -> None:
    configs = claim_sharing(
        claim(
            entry(params(interval="Long")),
            entry(params(interval="Short"), source="FromClass", requests=("a",)),
        )
    )
    assert intervals(configs, "a") == ["Long"]


def test_a_later_entry_overrides_an_earlier_one_whole() -> None:
    configs = claim_sharing(
        claim(
            entry(params(interval="Long")),
            entry(params(interval="Medium"), requests=("b",)),
            entry(dict(GPU_CONFIG), requests=("c",)),  # a GpuConfig that sets no sharing
        )
    )
    assert intervals(configs, "a", "b", "c") == ["Long", "Medium", None]
