"""Specification of the config parser (deviceplugin.config.schema.parse_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deviceplugin.config.schema import (
    DEFAULT_IGNORED_XIDS,
    Config,
    GpuRule,
    ReusePolicy,
    SharedResource,
    TaintEffect,
    parse_config,
)
from mig.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def fatia(body: str) -> Config:
    return parse_config("version: v1\n" + body)


def error_of(text: str, *, source: str = "config") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=source)
    return str(caught.value)


def fatia_error(body: str) -> str:
    return error_of("version: v1\n" + body)


def mig_parted_spec(spec: str) -> str:
    """A mig-parted config whose one config ``c`` is the one spec ``{SPEC}``."""
    return f"version: v1\nmig-configs:\n  c:\n    - {{{spec}}}\n"


# --- fatia v1: every key --------------------------------------------------------------------


def test_empty_document_gives_the_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.mig_strategy == "mixed"
    assert config.plugin.device_list_strategy == ("envvar",)
    assert config.health.ignored_xids == frozenset(DEFAULT_IGNORED_XIDS)


def test_a_comment_only_document_gives_the_defaults() -> None:
    assert parse_config("# nothing here yet\n") == Config()


def test_version_alone_gives_the_defaults() -> None:
    assert fatia("") == Config()


def test_devices_all_matches_every_gpu() -> None:
    assert fatia("gpus: [{devices: all}]").gpus[0].devices is None


def test_devices_left_out_means_all() -> None:
    assert fatia("gpus: [{replicas: 2}]").gpus[0].devices is None


def test_devices_as_indices() -> None:
    assert fatia("gpus: [{devices: [0, 2]}]").gpus[0].devices == (0, 2)


def test_devices_as_uuids() -> None:
    rule = fatia("gpus: [{devices: [GPU-abc, 1]}]").gpus[0]
    assert rule.devices == ("GPU-abc", 1)
    assert rule.matches(index=5, uuid="GPU-abc", product="x", pci_device_id=0)
    assert rule.matches(index=1, uuid="GPU-zzz", product="x", pci_device_id=0)
    assert not rule.matches(index=0, uuid="GPU-zzz", product="x", pci_device_id=0)


def test_product_is_a_case_insensitive_glob() -> None:
    rule = fatia("gpus: [{product: '*a100*40GB*'}]").gpus[0]
    assert rule.product == "*a100*40GB*"
    assert rule.matches(index=0, uuid="u", product="NVIDIA A100-SXM4-40GB", pci_device_id=0)
    assert not rule.matches(index=0, uuid="u", product="NVIDIA H100 80GB HBM3", pci_device_id=0)


def test_rule_paths_name_the_list_index() -> None:
    assert [r.path for r in fatia("gpus: [{devices: [0]}, {devices: [1]}]").gpus] == ["gpus[0]", "gpus[1]"]


def test_mig_enabled_defaults_to_false_without_mig_devices() -> None:
    assert fatia("gpus: [{devices: all}]").gpus[0].mig_enabled is False


def test_mig_enabled_defaults_to_true_when_mig_devices_are_given() -> None:
    rule = fatia("gpus: [{mig-devices: {1g.5gb: 7}}]").gpus[0]
    assert rule.mig_enabled is True
    assert rule.mig_devices == (("1g.5gb", 7),)


def test_mig_enabled_true_without_devices_is_mig_mode_with_no_instances() -> None:
    rule = fatia("gpus: [{mig-enabled: true}]").gpus[0]
    assert rule.mig_enabled is True
    assert rule.desired == {}


def test_mig_devices_keep_their_order_and_desired_drops_zero_counts() -> None:
    rule = fatia("gpus: [{mig-devices: {3g.20gb: 1, 1g.5gb: 0, 2g.10gb: 2}}]").gpus[0]
    assert rule.mig_devices == (("3g.20gb", 1), ("1g.5gb", 0), ("2g.10gb", 2))
    assert rule.desired == {"3g.20gb": 1, "2g.10gb": 2}


@pytest.mark.parametrize("name", ["1g.5gb+me", "1g.10gb+me.all", "1g.5gb-me", "1g.24gb+gfx", "7g.141gb"])
def test_media_extension_profile_names_are_accepted(name: str) -> None:
    assert fatia(f"gpus: [{{mig-devices: {{{name}: 1}}}}]").gpus[0].mig_devices == ((name, 1),)


def test_a_full_compute_instance_name_is_the_gpu_instance_profile() -> None:
    assert fatia("gpus: [{mig-devices: {3c.3g.20gb: 1}}]").gpus[0].mig_devices == (("3g.20gb", 1),)


def test_replicas() -> None:
    assert fatia("gpus: [{replicas: 4}]").gpus[0].replicas == 4


def test_replicas_default_to_none() -> None:
    assert fatia("gpus: [{devices: all}]").gpus[0].replicas is None


def test_time_slicing_keys() -> None:
    ts = fatia(
        "sharing:\n  timeSlicing:\n    renameByDefault: true\n"
        "    failRequestsGreaterThanOne: true\n"
        "    resources:\n    - {name: nvidia.com/gpu, replicas: 4}\n"
        "    - {name: nvidia.com/mig-1g.5gb, replicas: 2, devices: all}\n"
    ).time_slicing
    assert ts.rename_by_default is True
    assert ts.fail_requests_greater_than_one is True
    assert ts.resources == (SharedResource("nvidia.com/gpu", 4), SharedResource("nvidia.com/mig-1g.5gb", 2))
    assert ts.replicas_for("nvidia.com/mig-1g.5gb") == 2
    assert ts.replicas_for("nvidia.com/mig-2g.10gb") is None


def test_time_slicing_defaults() -> None:
    ts = fatia("sharing: {timeSlicing: {}}").time_slicing
    assert (ts.rename_by_default, ts.fail_requests_greater_than_one, ts.resources) == (False, False, ())


@pytest.mark.parametrize("strategy", ["mixed", "single", "none"])
def test_mig_strategy(strategy: str) -> None:
    assert fatia(f"migStrategy: {strategy}").mig_strategy == strategy


def test_mig_strategy_defaults_to_mixed() -> None:
    assert fatia("gpus: []").mig_strategy == "mixed"


def test_device_list_strategy_as_a_string() -> None:
    assert fatia("plugin: {deviceListStrategy: volume-mounts}").plugin.device_list_strategy == (
        "volume-mounts",
    )


def test_device_list_strategy_as_a_comma_string() -> None:
    plugin = fatia("plugin: {deviceListStrategy: 'envvar, cdi-cri'}").plugin
    assert plugin.device_list_strategy == ("envvar", "cdi-cri")


def test_device_list_strategy_as_a_list_without_duplicates() -> None:
    plugin = fatia("plugin: {deviceListStrategy: [cdi-cri, envvar, cdi-cri]}").plugin
    assert plugin.device_list_strategy == ("cdi-cri", "envvar")


def test_pass_device_specs_and_allocation_policy() -> None:
    plugin = fatia("plugin: {passDeviceSpecs: true, sharedDevicesAllocationPolicy: packed}").plugin
    assert plugin.pass_device_specs is True
    assert plugin.allocation_policy == "packed"


def test_plugin_defaults() -> None:
    plugin = fatia("plugin: {}").plugin
    assert (plugin.pass_device_specs, plugin.allocation_policy) == (False, "distributed")


def test_health_keys() -> None:
    health = fatia(
        "health: {enabled: false, ignoredXids: [13, 48], fatalXids: [13], recoverySeconds: 2.5}"
    ).health
    assert health.enabled is False
    assert health.ignored_xids == frozenset({13, 48})
    assert health.fatal_xids == frozenset({13})
    assert health.recovery_seconds == 2.5
    assert health.is_fatal(13)  # fatal wins over ignored
    assert not health.is_fatal(48)
    assert health.is_fatal(79)


def test_health_defaults() -> None:
    health = fatia("health: {}").health
    assert health.enabled is True
    assert health.ignored_xids == frozenset(DEFAULT_IGNORED_XIDS)
    assert health.fatal_xids == frozenset()
    assert health.recovery_seconds == 60.0


def test_dra_policies() -> None:
    policy = fatia("dra: {reuse: identical, taintEffect: NoExecute}").dra
    assert (policy.reuse, policy.taint_effect) == (ReusePolicy.IDENTICAL, TaintEffect.NO_EXECUTE)


def test_dra_defaults_keep_the_digest_of_a_config_without_the_block() -> None:
    policy = fatia("dra: {}").dra
    assert (policy.reuse, policy.taint_effect) == (ReusePolicy.NEVER, TaintEffect.NO_SCHEDULE)
    assert fatia("dra: {}").digest == fatia("dra: {reuse: never}").digest == fatia("").digest
    assert fatia("dra: {reuse: identical}").digest != fatia("").digest


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("dra: {reuse: always}", "dra.reuse: must be one of never, identical, not 'always'"),
        ("dra: {taintEffect: noexecute}", "dra.taintEffect: must be one of NoSchedule, NoExecute, not"),
        ("dra: {taintEffect: None}", "dra.taintEffect: must be one of NoSchedule, NoExecute, not 'None'"),
        ("dra: {reuse: true}", "dra.reuse: expected a string, got a boolean"),
        ("dra: identical", "dra: expected a mapping, got a string"),
        ("dra: {reused: never}", "dra.reused: unknown key; allowed here: reuse, taintEffect"),
    ],
)
def test_a_bad_dra_block_is_named_by_its_path(body: str, message: str) -> None:
    assert fatia_error(body).startswith(f"config: {message}")


def test_nvidia_formats_have_no_dra_block() -> None:
    assert "dra: unknown key" in error_of("version: v1\nflags: {}\ndra: {reuse: identical}\n")


def test_the_fatia_format_is_recorded() -> None:
    assert fatia("gpus: []").source_format == "fatia"


# --- fatia v1: strict errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("colour: red", "colour"),
        ("gpus: [{devices: all, colour: red}]", "gpus[0].colour"),
        ("gpus: [{devices: [0]}, {mig-device: {1g.5gb: 1}}]", "gpus[1].mig-device"),
        ("sharing: {mps: {}}", "sharing.mps"),
        ("sharing: {timeSlicing: {rename: true}}", "sharing.timeSlicing.rename"),
        (
            "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, rename: x}]}}",
            "sharing.timeSlicing.resources[0].rename",
        ),
        ("plugin: {deviceIDStrategy: uuid}", "plugin.deviceIDStrategy"),
        ("health: {xids: [1]}", "health.xids"),
    ],
)
def test_an_unknown_key_is_named_by_its_path(body: str, path: str) -> None:
    assert fatia_error(body).startswith(f"config: {path}: unknown key")


def test_an_unknown_key_message_lists_the_allowed_keys() -> None:
    assert "allowed here: devices, product, mig-enabled, mig-devices, replicas" in fatia_error(
        "gpus: [{colour: red}]"
    )


@pytest.mark.parametrize(
    ("body", "path", "expected"),
    [
        ("gpus: [{mig-enabled: 'yes'}]", "gpus[0].mig-enabled", "expected a boolean, got a string"),
        ("gpus: [{replicas: true}]", "gpus[0].replicas", "expected an integer, got a boolean"),
        ("gpus: [{replicas: '2'}]", "gpus[0].replicas", "expected an integer, got a string"),
        ("gpus: {devices: all}", "gpus", "expected a list, got a mapping"),
        ("gpus: [all]", "gpus[0]", "expected a mapping, got a string"),
        ("gpus: [{mig-devices: [1g.5gb]}]", "gpus[0].mig-devices", "expected a mapping, got a list"),
        ("gpus: [{devices: 0}]", "gpus[0].devices", "expected a string or a list, got an integer"),
        ("gpus: [{product: 100}]", "gpus[0].product", "expected a string, got an integer"),
        ("sharing: [timeSlicing]", "sharing", "expected a mapping, got a list"),
        (
            "sharing: {timeSlicing: {renameByDefault: 'false'}}",
            "sharing.timeSlicing.renameByDefault",
            "expected a boolean, got a string",
        ),
        (
            "sharing: {timeSlicing: {resources: {name: nvidia.com/gpu}}}",
            "sharing.timeSlicing.resources",
            "expected a list, got a mapping",
        ),
        (
            "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: true}]}}",
            "sharing.timeSlicing.resources[0].replicas",
            "expected an integer, got a boolean",
        ),
        ("plugin: {passDeviceSpecs: 1}", "plugin.passDeviceSpecs", "expected a boolean, got an integer"),
        (
            "plugin: {deviceListStrategy: {a: 1}}",
            "plugin.deviceListStrategy",
            "expected a string or a list, got a mapping",
        ),
        ("health: {enabled: 'no'}", "health.enabled", "expected a boolean, got a string"),
        ("health: {recoverySeconds: true}", "health.recoverySeconds", "got a boolean"),
        ("health: {ignoredXids: 13}", "health.ignoredXids", "expected a list, got an integer"),
        ("migStrategy: true", "migStrategy", "expected a string, got a boolean"),
    ],
)
def test_a_wrong_type_is_named_by_its_path(body: str, path: str, expected: str) -> None:
    message = fatia_error(body)
    assert message.startswith(f"config: {path}: ")
    assert expected in message


@pytest.mark.parametrize("name", ["1g.5gbb", "1g5gb", "g.5gb", "1g.5", "mig-1g.5gb", "1g.5gb+xx"])
def test_a_malformed_profile_name_is_rejected(name: str) -> None:
    message = fatia_error(f"gpus: [{{mig-devices: {{{name}: 1}}}}]")
    assert message.startswith(f"config: gpus[0].mig-devices.{name}: not a MIG profile name")


def test_a_partial_compute_instance_profile_is_rejected_with_the_reason() -> None:
    message = fatia_error("gpus: [{mig-devices: {1c.3g.20gb: 2}}]")
    assert message.startswith("config: gpus[0].mig-devices.1c.3g.20gb: compute-instance profiles")
    assert "not supported" in message
    assert "GPU-instance profile" in message


@pytest.mark.parametrize("count", ["-1", "true", "'2'", "1.5"])
def test_a_mig_device_count_must_be_a_whole_number(count: str) -> None:
    message = fatia_error(f"gpus: [{{mig-devices: {{1g.5gb: {count}}}}}]")
    assert message.startswith("config: gpus[0].mig-devices.1g.5gb: the count must be")


@pytest.mark.parametrize("replicas", [0, -3])
def test_replicas_below_one_are_rejected(replicas: int) -> None:
    assert fatia_error(f"gpus: [{{replicas: {replicas}}}]") == (
        f"config: gpus[0].replicas: must be at least 1, not {replicas}"
    )


@pytest.mark.parametrize("replicas", [0, -1])
def test_shared_resource_replicas_below_one_are_rejected(replicas: int) -> None:
    message = fatia_error(
        f"sharing: {{timeSlicing: {{resources: [{{name: nvidia.com/gpu, replicas: {replicas}}}]}}}}"
    )
    assert message.startswith("config: sharing.timeSlicing.resources[0].replicas: must be at least 1")


# A config (fatia's, the NVIDIA device plugin's or mig-parted's) and the start of the error
# that rejects it.
REJECTED = [
    pytest.param(
        "version: v1\ngpus: [{mig-enabled: false, mig-devices: {1g.5gb: 1}}]",
        "config: gpus[0].mig-devices: MIG devices listed while mig-enabled is false",
        id="mig-devices while mig-enabled is false",
    ),
    pytest.param(
        "version: v1\ngpus: [{devices: some}]",
        "config: gpus[0].devices: must be 'all' or a list",
        id="devices neither 'all' nor a list",
    ),
    pytest.param(
        "version: v1\nplugin: {deviceListStrategy: [envvar, cdi]}",
        "config: plugin.deviceListStrategy[1]: unknown strategy 'cdi'",
        id="an unknown device list strategy, by its list index",
    ),
    pytest.param(
        "version: v1\nplugin: {sharedDevicesAllocationPolicy: random}",
        "config: plugin.sharedDevicesAllocationPolicy: must be one of distributed, packed",
        id="an unknown allocation policy",
    ),
    pytest.param(
        "flags: {renameByDefault: true}\n",
        "config: flags.renameByDefault: unknown key",
        id="nvidia: unknown flags",
    ),
    pytest.param(
        "flags: {plugin: {deviceListStrategy: envvar, colour: red}}\n",
        "config: flags.plugin.colour: unknown key",
        id="nvidia: unknown plugin flags",
    ),
    pytest.param(
        "flags: {migStrategy: both}\n",
        "config: flags.migStrategy: must be",
        id="nvidia: a bad migStrategy, by its flag path",
    ),
    pytest.param(
        "flags: {}\nsharing:\n  timeSlicing:\n    resources: [{name: nvidia.com/gpu, replicas: 0}]\n",
        "config: sharing.timeSlicing.resources[0].replicas: must be at least 1",
        id="nvidia: bad time-slicing, by its path",
    ),
    pytest.param(
        mig_parted_spec("devices: all, mig-enabled: true, device-filter: [0x20B010DE, nvidia]"),
        "config: mig-configs.c[0].device-filter[1]: expected a PCI id",
        id="mig-parted: a malformed device-filter",
    ),
    pytest.param(
        mig_parted_spec("devices: all, mig-enabled: false, mig-devices: {1g.5gb: 1}"),
        "config: mig-configs.c[0].mig-devices: MIG devices included",
        id="mig-parted: mig-devices while mig-enabled is false",
    ),
    pytest.param(
        mig_parted_spec("devices: all, mig-enabled: true, replicas: 2"),
        "config: mig-configs.c[0].replicas: unknown key",
        id="mig-parted: an unknown spec key",
    ),
    pytest.param(
        mig_parted_spec("devices: all, mig-enabled: true, mig-devices: {1g.5gbb: 1}"),
        "config: mig-configs.c[0].mig-devices.1g.5gbb: not a MIG",
        id="mig-parted: an unknown profile name",
    ),
]


@pytest.mark.parametrize(("text", "message"), REJECTED)
def test_a_rejected_config_names_the_key_path(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


@pytest.mark.parametrize("item", ["x", "-1", "true", "MIG-abc"])
def test_a_device_must_be_an_index_or_a_gpu_uuid(item: str) -> None:
    assert fatia_error(f"gpus: [{{devices: [0, {item}]}}]").startswith(
        "config: gpus[0].devices[1]: expected a GPU index (0 to 63) or a 'GPU-…' UUID"
    )


@pytest.mark.parametrize("name", ["gpu", "nvidia.com/", "nvidia.com/mig 1g", "Nvidia.com/gpu", "/gpu"])
def test_an_invalid_resource_name_is_rejected(name: str) -> None:
    message = fatia_error(f"sharing: {{timeSlicing: {{resources: [{{name: '{name}', replicas: 2}}]}}}}")
    assert message.startswith("config: sharing.timeSlicing.resources[0].name: ")
    assert "not an extended resource name" in message


def test_a_resource_listed_twice_is_rejected() -> None:
    message = fatia_error(
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2},"
        " {name: nvidia.com/gpu, replicas: 3}]}}"
    )
    assert message == "config: sharing.timeSlicing.resources[1].name: nvidia.com/gpu is listed twice"


def test_a_shared_resource_needs_name_and_replicas() -> None:
    assert fatia_error("sharing: {timeSlicing: {resources: [{replicas: 2}]}}") == (
        "config: sharing.timeSlicing.resources[0].name: missing"
    )
    assert fatia_error("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu}]}}") == (
        "config: sharing.timeSlicing.resources[0].replicas: missing"
    )


def test_sharing_only_some_devices_of_a_resource_is_rejected() -> None:
    message = fatia_error(
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [0]}]}}"
    )
    assert message.startswith("config: sharing.timeSlicing.resources[0].devices: ")
    assert "gpus[].replicas" in message


def test_an_unknown_mig_strategy_is_rejected() -> None:
    assert fatia_error("migStrategy: auto") == (
        "config: migStrategy: must be one of mixed, single, none, not 'auto'"
    )


@pytest.mark.parametrize("xid", ["0", "-5", "'13'", "true"])
def test_an_xid_must_be_a_positive_number(xid: str) -> None:
    assert fatia_error(f"health: {{fatalXids: [79, {xid}]}}").startswith(
        "config: health.fatalXids[1]: expected an XID number"
    )


@pytest.mark.parametrize("seconds", ["0", "-1.5", "0.05"])
def test_recovery_seconds_must_be_at_least_a_tenth_of_a_second(seconds: str) -> None:
    assert fatia_error(f"health: {{recoverySeconds: {seconds}}}") == (
        f"config: health.recoverySeconds: must be at least 0.1, not {seconds}"
    )


def test_bad_yaml_names_line_and_column() -> None:
    message = error_of("version: v1\ngpus:\n  - devices: [0, 1\n    replicas: 2\n")
    assert message.startswith("config:4:13: not valid YAML: ")


def test_bad_yaml_points_at_the_offending_line() -> None:
    assert error_of("version: v1\n a: b\n").startswith("config:2:3: not valid YAML")


@pytest.mark.parametrize(
    ("text", "kind"), [("- 1\n- 2\n", "a list"), ("just text", "a string"), ("42", "an integer")]
)
def test_a_document_that_is_not_a_mapping_is_rejected(text: str, kind: str) -> None:
    assert error_of(text) == f"config: the document must be a mapping, not {kind}"


def test_an_unknown_version_is_rejected() -> None:
    assert error_of("version: v2\ngpus: []") == ("config: version: unknown version 'v2'; fatia reads v1")


def test_a_fatia_config_needs_a_version() -> None:
    assert error_of("gpus: []").startswith("config: version: missing")


def test_the_source_prefixes_every_message() -> None:
    assert error_of("version: v1\ncolour: red", source="/etc/fatia/config.yaml").startswith(
        "/etc/fatia/config.yaml: colour: unknown key"
    )
    assert error_of("a: [", source="cm/fatia-node-a").startswith("cm/fatia-node-a:2:1: not valid YAML")


# --- digest ---------------------------------------------------------------------------------


def test_the_digest_ignores_key_order_whitespace_and_comments() -> None:
    one = parse_config("version: v1\nmigStrategy: mixed\ngpus: [{devices: all, replicas: 2}]\n")
    two = parse_config(
        "# a comment\ngpus:\n  - replicas: 2\n    devices: all\n\nmigStrategy:   mixed\nversion: v1\n"
    )
    assert one.digest
    assert one.digest == two.digest


def test_the_digest_changes_with_the_content() -> None:
    one = parse_config("version: v1\ngpus: [{devices: all, replicas: 2}]\n")
    two = parse_config("version: v1\ngpus: [{devices: all, replicas: 3}]\n")
    assert one.digest != two.digest


def test_the_digest_does_not_affect_equality() -> None:
    assert parse_config("version: v1\n") == parse_config("version: v1\nmigStrategy: mixed\n")


# --- mig-parted v1 --------------------------------------------------------------------------

MIG_PARTED = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-balanced:
    - devices: [0, 1]
      mig-enabled: true
      device-filter: ["0x20B010DE", "0x20B110DE"]
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
    - devices: all
      mig-enabled: true
      device-filter: "0x233010DE"
      mig-devices:
        "1g.10gb": 2
        "2g.20gb": 1
        "3g.40gb": 1
"""


def test_mig_parted_select_picks_the_config() -> None:
    config = parse_config(MIG_PARTED + "select: all-balanced\n")
    assert config.source_format == "mig-parted"
    assert config.mig_strategy == "mixed"
    assert [r.path for r in config.gpus] == ["mig-configs.all-balanced[0]", "mig-configs.all-balanced[1]"]
    first = config.gpus[0]
    assert first.devices == (0, 1)
    assert first.mig_enabled is True
    assert first.desired == {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}


def test_mig_parted_select_of_a_disabled_config() -> None:
    (rule,) = parse_config(MIG_PARTED + "select: all-disabled\n").gpus
    assert (rule.devices, rule.mig_enabled, rule.mig_devices) == (None, False, ())


def test_mig_parted_device_filter_as_a_list_becomes_pci_ids() -> None:
    config = parse_config(MIG_PARTED + "select: all-balanced\n")
    assert config.gpus[0].device_filter == (0x20B010DE, 0x20B110DE)


def test_mig_parted_device_filter_as_a_string_becomes_one_pci_id() -> None:
    config = parse_config(MIG_PARTED + "select: all-balanced\n")
    assert config.gpus[1].device_filter == (0x233010DE,)


def test_mig_parted_device_filter_limits_the_match() -> None:
    rule = parse_config(MIG_PARTED + "select: all-balanced\n").gpus[1]
    assert rule.matches(index=3, uuid="u", product="p", pci_device_id=0x233010DE)
    assert not rule.matches(index=3, uuid="u", product="p", pci_device_id=0x20B010DE)


def test_mig_parted_single_config_needs_no_select() -> None:
    text = (
        "version: v1\nmig-configs:\n  only:\n    - {devices: all, mig-enabled: true, "
        "mig-devices: {1g.5gb: 7}}\n"
    )
    (rule,) = parse_config(text).gpus
    assert rule.path == "mig-configs.only[0]"
    assert rule.desired == {"1g.5gb": 7}


def test_mig_parted_several_configs_without_select_list_the_names() -> None:
    message = error_of(MIG_PARTED)
    assert message.startswith("config: select: missing")
    assert "all-disabled, all-balanced" in message


def test_mig_parted_unknown_select_lists_the_names() -> None:
    assert error_of(MIG_PARTED + "select: all-1g.5gb\n") == (
        "config: select: no config 'all-1g.5gb' in mig-configs; have all-disabled, all-balanced"
    )


@pytest.mark.parametrize("missing", ["devices", "mig-enabled"])
def test_mig_parted_requires_devices_and_mig_enabled(missing: str) -> None:
    spec = {"devices": "devices: all", "mig-enabled": "mig-enabled: true"}
    del spec[missing]
    text = f"version: v1\nmig-configs:\n  c:\n    - {{{', '.join(spec.values())}}}\n"
    assert error_of(text) == f"config: mig-configs.c[0].{missing}: missing (mig-parted requires it)"


def test_mig_parted_all_zero_counts_are_rejected() -> None:
    text = (
        "version: v1\nmig-configs:\n  c:\n    - {devices: all, mig-enabled: true, "
        "mig-devices: {1g.5gb: 0, 2g.10gb: 0}}\n"
    )
    assert error_of(text) == "config: mig-configs.c[0].mig-devices: all counts are 0"


def test_mig_parted_needs_a_non_empty_config() -> None:
    assert error_of("version: v1\nmig-configs: {}\n").startswith("config: mig-configs: at least one")
    assert error_of("version: v1\nmig-configs:\n  c: []\n").startswith(
        "config: mig-configs.c: expected a non-empty list"
    )


# --- NVIDIA device-plugin v1 ----------------------------------------------------------------

NVIDIA = """\
version: v1
flags:
  migStrategy: single
  failOnInitError: false
  nvidiaDriverRoot: /run/nvidia/driver
  mpsRoot: /run/nvidia/mps
  gdsEnabled: false
  useNodeFeatureAPI: true
  deviceDiscoveryStrategy: auto
  gfd: {oneshot: false}
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, volume-mounts]
    deviceIDStrategy: uuid
    sharedDevicesAllocationPolicy: packed
    cdiAnnotationPrefix: cdi.k8s.io/
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
    - name: nvidia.com/gpu
      replicas: 10
"""


def test_nvidia_flags_map_to_the_same_fields() -> None:
    config = parse_config(NVIDIA)
    assert config.source_format == "nvidia-device-plugin"
    assert config.mig_strategy == "single"
    assert config.plugin.device_list_strategy == ("envvar", "volume-mounts")
    assert config.plugin.pass_device_specs is True
    assert config.plugin.allocation_policy == "packed"


def test_nvidia_time_slicing_maps_to_the_same_fields() -> None:
    ts = parse_config(NVIDIA).time_slicing
    assert ts.rename_by_default is True
    assert ts.fail_requests_greater_than_one is True
    assert ts.resources == (SharedResource("nvidia.com/gpu", 10),)


def test_nvidia_and_fatia_formats_agree_on_the_shared_fields() -> None:
    ours = parse_config(
        "version: v1\nmigStrategy: single\n"
        "plugin: {deviceListStrategy: [envvar, volume-mounts], passDeviceSpecs: true,"
        " sharedDevicesAllocationPolicy: packed}\n"
        "sharing: {timeSlicing: {renameByDefault: true, failRequestsGreaterThanOne: true,"
        " resources: [{name: nvidia.com/gpu, replicas: 10}]}}\n"
    )
    theirs = parse_config(NVIDIA)
    assert (ours.mig_strategy, ours.plugin, ours.time_slicing) == (
        theirs.mig_strategy,
        theirs.plugin,
        theirs.time_slicing,
    )


def test_nvidia_mig_strategy_defaults_to_none_as_nvidia_does() -> None:
    assert parse_config("flags: {failOnInitError: true}\n").mig_strategy == "none"


def test_nvidia_config_has_no_gpu_rules() -> None:
    assert parse_config(NVIDIA).gpus == ()


def test_nvidia_version_may_be_left_out() -> None:
    assert parse_config("flags: {migStrategy: mixed}\n").mig_strategy == "mixed"


def test_nvidia_resources_and_imex_sections_are_accepted() -> None:
    config = parse_config(
        "version: v1\nflags: {}\nresources: {gpus: [{pattern: '*', name: gpu}]}\nimex: {channelIDs: []}\n"
    )
    assert config.source_format == "nvidia-device-plugin"


def test_nvidia_mps_is_rejected_with_a_clear_message() -> None:
    message = error_of(
        "version: v1\nflags: {migStrategy: none}\nsharing:\n  mps:\n"
        "    resources: [{name: nvidia.com/gpu, replicas: 2}]\n"
    )
    assert message == "config: sharing.mps: MPS sharing is not supported by fatia; use timeSlicing"


# --- the shipped examples -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mig-all-balanced.yaml", "mig-per-gpu-mixed.yaml", "time-slicing.yaml"])
def test_the_examples_parse(name: str) -> None:
    config = parse_config((EXAMPLES / name).read_text(), source=name)
    assert config.source_format == "fatia"
    assert config.gpus


def test_the_balanced_example_asks_for_the_balanced_layout() -> None:
    config = parse_config((EXAMPLES / "mig-all-balanced.yaml").read_text())
    assert config.gpus == (
        GpuRule(
            path="gpus[0]",
            product="*A100*40GB*",
            mig_enabled=True,
            mig_devices=(("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)),
        ),
    )


def test_the_per_gpu_example_has_four_rules() -> None:
    config = parse_config((EXAMPLES / "mig-per-gpu-mixed.yaml").read_text())
    assert [r.devices for r in config.gpus] == [(0,), (1,), (2,), (3,)]
    assert config.gpus[0].replicas == 2
    assert config.time_slicing.replicas_for("nvidia.com/mig-1g.5gb") == 4


def test_the_time_slicing_example_has_four_replicas() -> None:
    config = parse_config((EXAMPLES / "time-slicing.yaml").read_text())
    assert config.gpus[0].replicas == 4
    assert config.time_slicing.rename_by_default is False
