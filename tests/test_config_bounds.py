"""Bad and huge input never costs the node: the loader's limits, the schema's ranges, the
kubelet's 4 MiB, unreadable files (issue 9).

Each numbered case of the issue is a test named ``test_case<N>_...``; the property-based
fuzz test is in ``tests/fuzz``, the daemon under a memory limit in ``test_config_daemon``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.config import limits, yamlload
from deviceplugin.config.schema import Config, parse_config
from deviceplugin.config.source import ConfigText, FileConfigSource
from deviceplugin.kubelet.server import listing
from deviceplugin.plan.node import count_devices, errors, plan_node, planned_resources
from deviceplugin.plan.resources import build_resources
from deviceplugin.testing.daemon import fatia_cli
from mig.errors import ConfigError
from mig.inventory import Inventory, InventoryReader
from mig.nvml import open_nvml

REPO = Path(__file__).resolve().parents[1]
# Nine levels of nine aliases each: 9**9 (387 million) values once expanded.
BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def error_of(text: str, *, source: str = "config") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source=source)
    return str(caught.value)


def inventory(spec: str, tmp_path: Path) -> Inventory:
    return InventoryReader(open_nvml(spec, state_dir=tmp_path, node_name="node-a")).read()


def peak_mib(text: str) -> float:
    """Peak traced MiB of parse_config on ``text``, whatever it raises.

    How fast a hostile config is refused is measured by bench/hostile_configs.py, not here.
    """
    tracemalloc.start()
    with contextlib.suppress(ConfigError):
        parse_config(text)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


# --- case 1: non-finite and huge numbers ----------------------------------------------------


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "1.0e+400", "1e400", "'60'"])
def test_case1_recovery_seconds_must_be_a_finite_number(value: str) -> None:
    message = error_of(f"version: v1\nhealth: {{recoverySeconds: {value}}}\n")
    assert message.startswith("config: health.recoverySeconds: "), message


def test_case1_recovery_seconds_is_at_most_a_day() -> None:
    assert error_of("version: v1\nhealth: {recoverySeconds: 86401}\n") == (
        "config: health.recoverySeconds: must be at most 86400, not 86401"
    )
    assert parse_config("version: v1\nhealth: {recoverySeconds: 86400}\n").health.recovery_seconds == 86400


def test_case1_a_number_of_400_digits_names_its_line_and_column() -> None:
    message = error_of("version: v1\nhealth:\n  recoverySeconds: 1" + "0" * 400 + "\n")
    assert message == "config:3:20: a number of 401 characters; at most 64"


def test_case1_a_large_whole_number_is_out_of_range_not_an_overflow() -> None:
    message = error_of("version: v1\nhealth: {recoverySeconds: " + "9" * 60 + "}\n")
    assert message.startswith("config: health.recoverySeconds: must be at most 86400, not 999")
    assert len(message) < 150  # the number is cut short in the message


@pytest.mark.parametrize("depth", [33, 3000, 300_000])
def test_case1_deep_nesting_is_an_error_with_a_position(depth: int) -> None:
    message = error_of("version: v1\ngpus: " + "[" * depth + "]" * depth + "\n")
    assert message.startswith("config:2:"), message
    assert "nest" in message


def test_nesting_at_the_limit_is_read() -> None:
    nested = "[" * (limits.MAX_DEPTH - 1) + "]" * (limits.MAX_DEPTH - 1)
    assert yamlload.load(f"a: {nested}") is not None


# --- case 2: replicas that would build millions of devices ------------------------------------


def test_case2_gpu_replicas_above_the_limit_are_rejected() -> None:
    assert error_of("version: v1\ngpus: [{devices: all, replicas: 1000000}]\n") == (
        "config: gpus[0].replicas: must be at most 10000, not 1000000"
    )


def test_case2_shared_resource_replicas_above_the_limit_are_rejected() -> None:
    message = error_of(
        "version: v1\nsharing:\n  timeSlicing:\n"
        "    resources: [{name: nvidia.com/gpu, replicas: 1000000000000}]\n"
    )
    assert (
        message
        == "config: sharing.timeSlicing.resources[0].replicas: must be at most 10000, not 1000000000000"
    )


def test_case2_replicas_at_the_limit_are_accepted() -> None:
    assert parse_config("version: v1\ngpus: [{replicas: 10000}]\n").gpus[0].replicas == limits.MAX_REPLICAS


# --- case 3: the kubelet's 4 MiB ListAndWatch limit ------------------------------------------


def _worst_listing(count: int, id_length: int) -> api_pb2.ListAndWatchResponse:
    response = api_pb2.ListAndWatchResponse()
    for n in range(count):
        entry = response.devices.add(ID=f"{n:x>{id_length}}"[-id_length:], health="Unhealthy")
        entry.topology.nodes.add(ID=-1)  # a negative int64: ten varint bytes
    return response


@pytest.mark.parametrize("id_length", [1, 40, 47, 50, 127, 128, 300])
def test_listing_bytes_is_the_size_of_a_real_message(id_length: int) -> None:
    for count in (1, 2, 1000):
        assert _worst_listing(count, id_length).ByteSize() == limits.listing_bytes(count, id_length)


def test_a_listing_at_the_device_limit_fits_the_kubelet_and_one_more_exceeds_the_budget() -> None:
    id_length = 47  # a GPU UUID with "::9999"
    most = limits.max_listed_devices(id_length)
    at_limit = _worst_listing(most, id_length).ByteSize()
    assert at_limit <= limits.LISTING_BUDGET < limits.KUBELET_MAX_MESSAGE
    assert at_limit + limits.device_entry_bytes(id_length) > limits.LISTING_BUDGET
    assert limits.KUBELET_MAX_MESSAGE == 4194304


def test_case3_replicas_beyond_the_kubelet_limit_are_an_error_naming_the_limit(tmp_path: Path) -> None:
    node = inventory("sim:a100-40gb:8", tmp_path)
    config = parse_config("version: v1\ngpus: [{devices: all, replicas: 10000}]\n")
    (message,) = errors(plan_node(node, config))
    assert message == (
        "gpus[0].replicas: 10000 replicas on 8 GPUs is 80000 devices of nvidia.com/gpu; the kubelet "
        f"accepts at most \N{ALMOST EQUAL TO} {limits.max_listed_devices(46)} for this resource "
        "(a 4 MiB device list)"
    )


def test_case3_mig_devices_and_replicas_together_are_counted(tmp_path: Path) -> None:
    node = inventory("sim:h100-80gb:3", tmp_path)
    config = parse_config("version: v1\ngpus: [{devices: all, mig-devices: {1g.10gb: 7}, replicas: 2000}]\n")
    (message,) = errors(plan_node(node, config))
    assert message.startswith(
        "gpus[0].replicas: 2000 replicas of 21 devices on 3 GPUs is 42000 devices of nvidia.com/mig-1g.10gb;"
    )


def test_case3_the_error_names_every_source_of_replicas(tmp_path: Path) -> None:
    node = inventory("sim:a100-40gb:8", tmp_path)
    config = parse_config(
        "version: v1\ngpus: [{devices: [0, 1, 2, 3], replicas: 9000}, {devices: all, replicas: 3000}]\n"
    )
    (message,) = errors(plan_node(node, config))
    assert message.startswith(
        "gpus[0].replicas: 9000 replicas on 4 GPUs and gpus[1].replicas: 3000 replicas on 4 GPUs is 48000"
    )


def test_case3_a_node_at_the_limit_sends_every_listing_under_4_mib(tmp_path: Path) -> None:
    node = inventory("sim:a100-40gb:8", tmp_path)
    replicas = limits.max_listed_devices(46) // 8  # the most that pass the check
    config = parse_config(f"version: v1\ngpus: [{{devices: all, replicas: {replicas}}}]\n")
    assert errors(plan_node(node, config)) == []
    (resource,) = build_resources(node, config).values()
    assert listing(resource).ByteSize() <= limits.LISTING_BUDGET


def test_case3_the_node_total_is_bounded(tmp_path: Path) -> None:
    node = inventory("sim:h100-80gb:8", tmp_path)
    # 31,200 and 20,800 devices: each resource fits the kubelet, the node's total is too many.
    config = parse_config(
        "version: v1\ngpus: [{devices: all, mig-devices: {1g.10gb: 3, 2g.20gb: 2}, replicas: 1300}]\n"
    )
    (message,) = errors(plan_node(node, config))
    assert message == "gpus[0].replicas: 52000 devices on this node in all; fatia advertises at most 50000"


def test_case3_the_plan_refuses_without_building_a_device(tmp_path: Path) -> None:
    node = inventory("sim:h100-80gb:8", tmp_path)
    config = parse_config("version: v1\ngpus: [{devices: all, mig-devices: {1g.10gb: 7}, replicas: 10000}]\n")
    tracemalloc.start()  # how fast: bench/hostile_configs.py
    assert errors(plan_node(node, config))
    assert planned_resources(node, plan_node(node, config), config)[0] == {"nvidia.com/mig-1g.10gb": 70000}
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20  # 560,000 devices would be hundreds of MiB


@pytest.mark.parametrize(
    "body",
    [
        "gpus: [{devices: all, replicas: 3}]",
        "gpus: [{devices: [0], mig-devices: {1g.10gb: 2, 3g.40gb: 1}, replicas: 2},"
        " {devices: all, replicas: 5}]",
        "gpus: [{devices: all, mig-devices: {1g.10gb: 7}}]\nmigStrategy: single\n"
        "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 3}]}}",
        "gpus: [{devices: all, mig-devices: {2g.20gb: 3}}]\nmigStrategy: none\n"
        "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}",
        "gpus: [{devices: all, mig-devices: {1g.10gb: 1, 3g.40gb: 1}, replicas: 2}]\n"
        "sharing: {timeSlicing: {renameByDefault: true,"
        " resources: [{name: nvidia.com/mig-1g.10gb, replicas: 6}]}}",
    ],
)
def test_the_device_count_agrees_with_the_devices_built(body: str, tmp_path: Path) -> None:
    node = inventory("sim:h100-80gb:2", tmp_path)
    config = parse_config("version: v1\n" + body)
    plans = plan_node(node, config)
    assert errors(plans) == []
    counted = {name: count.devices for name, count in count_devices(node, plans, config).items()}
    # Apply the plan on the simulator, then build what the agent would advertise.
    from deviceplugin.plan.node import targets
    from mig.apply.reconciler import Reconciler

    nvml = open_nvml("sim:h100-80gb:2", state_dir=tmp_path, node_name="node-a")
    Reconciler(nvml, state_dir=tmp_path / "journal").apply(targets(plans), held=set())
    built = build_resources(InventoryReader(nvml).read(), config)
    assert counted == {name: len(resource.devices) for name, resource in built.items()}
    assert all(
        max(len(d.id) for d in resource.devices) <= count_devices(node, plans, config)[name].id_length
        for name, resource in built.items()
    )


# --- case 4: an alias bomb under a key fatia does not use --------------------------------------


def test_case4_an_alias_bomb_under_imex_is_refused_quickly_and_small() -> None:
    text = "version: v1\nflags: {migStrategy: none}\nimex:\n  " + BILLION_LAUGHS.replace("\n", "\n  ")
    message = error_of(text)
    assert message.startswith("config:") and f"more than {limits.MAX_NODES} values" in message, message
    assert peak_mib(text) < 16


def test_case4_aliases_that_stay_small_are_read_as_pyyaml_reads_them() -> None:
    text = (
        "version: v1\nmig-configs:\n"
        "  base: &spec\n    - devices: all\n      mig-enabled: true\n      mig-devices: {1g.5gb: 7}\n"
        "  same: *spec\n"
        "  merged:\n    - <<: &common {devices: all, mig-enabled: true}\n      mig-devices: {3g.20gb: 2}\n"
        "    - {<<: *common, devices: [1]}\n"
        "select: merged\n"
    )
    assert yamlload.load(text) == yaml.safe_load(text)
    config = parse_config(text)
    assert [(r.devices, r.mig_devices) for r in config.gpus] == [(None, (("3g.20gb", 2),)), ((1,), ())]


def test_case4_more_aliases_than_the_limit_are_refused() -> None:
    aliases = ", ".join(["*a"] * (limits.MAX_ALIASES + 1))
    assert error_of(f"a: &a 1\nb: [{aliases}]\n").endswith(f"more than {limits.MAX_ALIASES} aliases")


def test_case4_a_recursive_alias_is_refused() -> None:
    assert error_of("version: v1\ngpus: &g [*g]\n") == (
        "config:2:11: alias *g is inside its own anchor (a recursive document)"
    )


def test_case4_the_digest_is_the_same_written_with_or_without_aliases() -> None:
    plain = parse_config("version: v1\ngpus: [{devices: [0], replicas: 2}, {devices: [1], replicas: 2}]\n")
    aliased = parse_config(
        "version: v1\ngpus: [{devices: [0], replicas: &r 2}, {devices: [1], replicas: *r}]\n"
    )
    assert plain.digest == aliased.digest


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ("imex: {channelIDs: [0]}", "imex.channelIDs: IMEX channels are not supported by fatia"),
        ("imex: {channelIDs: [x]}", "imex.channelIDs[0]: expected a channel number"),
        ("imex: {required: maybe}", "imex.required: expected a boolean"),
        ("imex: {colour: red}", "imex.colour: unknown key"),
        ("resources: {gpus: [{pattern: '*', name: a100}]}", "resources.gpus[0].name: renaming resources"),
        ("resources: {mig: [{pattern: 1g.5gb, name: small}]}", "resources.mig[0].name: renaming resources"),
        ("resources: {gpus: [{pattern: '*'}]}", "resources.gpus[0].name: missing"),
        ("flags: {gdsEnabled: true}", "flags.gdsEnabled: not supported by fatia"),
        ("flags: {mofedEnabled: true}", "flags.mofedEnabled: not supported by fatia"),
        ("flags: {gdrcopyEnabled: true}", "flags.gdrcopyEnabled: not supported by fatia"),
        ("flags: {failOnInitError: 3}", "flags.failOnInitError: expected a boolean"),
        ("flags: {nvidiaDriverRoot: [a]}", "flags.nvidiaDriverRoot: expected a string"),
        (
            "flags: {deviceDiscoveryStrategy: tegra}",
            "flags.deviceDiscoveryStrategy: 'tegra' is not supported",
        ),
        ("flags: {gfd: {oneshot: 1}}", "flags.gfd.oneshot: expected a boolean"),
        ("flags: {gfd: {sleepInterval: [1]}}", "flags.gfd.sleepInterval: expected a string"),
        (
            "flags: {plugin: {deviceIDStrategy: index}}",
            "flags.plugin.deviceIDStrategy: 'index' is not supported",
        ),
        ("flags: {plugin: {nvidiaCTKPath: 5}}", "flags.plugin.nvidiaCTKPath: expected a string"),
    ],
)
def test_case4_every_nvidia_key_fatia_does_not_use_is_checked(body: str, path: str) -> None:
    assert error_of(
        f"version: v1\nflags: {{}}\n{body}\n" if not body.startswith("flags") else body
    ).startswith(f"config: {path}")


def test_case4_nvidia_keys_at_values_that_change_nothing_are_accepted() -> None:
    config = parse_config(
        "version: v1\nflags:\n  gdsEnabled: false\n  deviceDiscoveryStrategy: nvml\n"
        "  plugin: {deviceIDStrategy: uuid}\n  gfd: {oneshot: true, sleepInterval: 60s}\n"
        "resources:\n  gpus: [{pattern: '*', name: gpu}]\n  mig: [{pattern: 1g.5gb, name: mig-1g.5gb}]\n"
        "imex: {channelIDs: [], required: false}\n"
    )
    assert config.source_format == "nvidia-device-plugin"


def test_every_mig_parted_config_is_checked_not_only_the_selected_one() -> None:
    message = error_of(
        "version: v1\nselect: good\nmig-configs:\n"
        "  good: [{devices: all, mig-enabled: false}]\n"
        "  bad: [{devices: all, mig-enabled: true, mig-devices: {1g.5gbb: 1}}]\n"
    )
    assert message.startswith("config: mig-configs.bad[0].mig-devices.1g.5gbb: not a MIG profile name")


@pytest.mark.parametrize(("item", "expected"), [("0x20B010DE", 0x20B010DE), ("20b0", 0x20B0)])
def test_a_device_filter_reads_quoted_and_unquoted_hex(item: str, expected: int) -> None:
    for written in (f"'{item}'", item):
        config = parse_config(
            "version: v1\nmig-configs:\n"
            f"  a: [{{devices: all, mig-enabled: false, device-filter: [{written}]}}]\n"
        )
        assert config.gpus[0].device_filter == (expected,)


# --- case 5: a 1 MiB config -----------------------------------------------------------------


def test_case5_the_c_loader_is_used_when_pyyaml_has_libyaml() -> None:
    if yaml.__with_libyaml__:
        assert yamlload.LOADER is yaml.CSafeLoader
    else:
        assert yamlload.LOADER is yaml.SafeLoader


def test_case5_the_image_installs_pyyaml_as_a_wheel_with_libyaml() -> None:
    # The Dockerfile builds only binary wheels of the pinned PyYAML, and those bundle libyaml,
    # as the wheel this test runs with does.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--only-binary=:all:" in dockerfile
    assert "PyYAML==" in (REPO / "daemonset" / "constraints.txt").read_text()
    assert yaml.__with_libyaml__, "the development environment's PyYAML has no libyaml"


def _dense(size: int = limits.MAX_BYTES) -> str:
    head = "version: v1\njunk: ["
    return head + ",".join(["1"] * ((size - len(head) - 2) // 2)) + "]\n"


def test_case5_a_1_mib_dense_list_under_an_unknown_key_is_refused_small() -> None:
    text = _dense()
    assert len(text.encode()) <= limits.MAX_BYTES
    assert f"more than {limits.MAX_NODES} values" in error_of(text)
    assert peak_mib(text) < 64


def test_case5_more_than_1_mib_is_refused_before_parsing() -> None:
    text = "version: v1\n" + "#" * limits.MAX_BYTES
    assert (
        error_of(text)
        == f"config: {len(text)} bytes is larger than 1048576 (1 MiB, the most a ConfigMap holds)"
    )
    assert peak_mib(text * 20) < 1  # refused on its length: nothing of it is parsed


def test_case5_the_pure_python_loader_obeys_the_same_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlload, "LOADER", yaml.SafeLoader)
    assert f"more than {limits.MAX_NODES} values" in error_of(_dense(200_000))
    assert error_of("a: b\na: c\n") == 'config:2:1: duplicate key "a" (first at line 1, column 1)'


# --- case 6: unreadable files ------------------------------------------------------------------


def _configmap(directory: Path, data: bytes | None, *, as_directory: bool = False) -> None:
    """Write ``config.yaml`` as the kubelet updates a ConfigMap volume: a new dir, then ``..data`` swapped."""
    directory.mkdir(exist_ok=True)
    version = directory / f"..{time.monotonic_ns()}"
    version.mkdir()
    if as_directory:
        (version / "config.yaml").mkdir()
    elif data is not None:
        (version / "config.yaml").write_bytes(data)
    link = directory / "..data_tmp"
    link.symlink_to(version.name)
    link.replace(directory / "..data")
    key = directory / "config.yaml"
    if not key.is_symlink():
        key.symlink_to("..data/config.yaml")


@pytest.fixture
def configmap(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cm"


def test_case6_non_utf8_content_is_an_error_naming_the_byte(configmap: Path) -> None:
    _configmap(configmap, b"version: v1\ngpus: [{replicas: 2}]\n# caf\xe9\n")
    found = FileConfigSource(configmap).read()
    assert found is not None and found.text is None
    assert found.error == (
        f"{configmap / 'config.yaml'}:3:6: not UTF-8 text: byte 0xe9 cannot start or continue a character "
        "(a ConfigMap's data must be UTF-8)"
    )


def test_case6_utf16_is_named_as_such(configmap: Path) -> None:
    _configmap(configmap, "version: v1\n".encode("utf-16"))
    found = FileConfigSource(configmap).read()
    assert found is not None and "is UTF-16" in str(found.error)


def test_case6_a_bom_is_dropped(configmap: Path) -> None:
    _configmap(configmap, b"\xef\xbb\xbfversion: v1\n")
    assert FileConfigSource(configmap).read() == ConfigText("version: v1\n", str(configmap / "config.yaml"))


def test_case6_config_yaml_as_a_directory_is_an_error(configmap: Path) -> None:
    _configmap(configmap, None, as_directory=True)
    found = FileConfigSource(configmap).read()
    assert found is not None and found.error == f"{configmap / 'config.yaml'} is a directory, not a file"


def test_case6_a_file_larger_than_a_configmap_is_an_error_without_reading_it(configmap: Path) -> None:
    _configmap(configmap, b"#" * (limits.MAX_BYTES + 10))
    found = FileConfigSource(configmap).read()
    assert found is not None
    assert found.error == (
        f"{configmap / 'config.yaml'}: 1048586 bytes is larger than 1048576 "
        "(1 MiB, the most a ConfigMap holds)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_case6_permission_denied_is_an_error_and_is_tried_again(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\n")
    config.chmod(0)
    source = FileConfigSource(config)
    found = source.read()
    assert found is not None and found.error == f"cannot read {config}: Permission denied"
    config.chmod(0o644)
    assert source.read() == ConfigText("version: v1\n", str(config))


def test_case6_an_error_is_delivered_once_and_the_file_is_read_again_when_it_changes(configmap: Path) -> None:
    _configmap(configmap, b"version: v1\n")
    source = FileConfigSource(configmap)
    assert source.read() == ConfigText("version: v1\n", str(configmap / "config.yaml"))
    _configmap(configmap, b"\xff")
    assert source.read() is not None and source.read() is None  # once
    _configmap(configmap, b"version: v1\n")  # the same content as before the error: delivered again
    assert source.read() == ConfigText("version: v1\n", str(configmap / "config.yaml"))


def test_case6_a_directory_that_becomes_a_file_is_read_on_the_next_poll(configmap: Path) -> None:
    _configmap(configmap, None, as_directory=True)
    source = FileConfigSource(configmap)
    assert source.read() is not None
    assert source.read() is None
    _configmap(configmap, b"version: v1\n")
    assert source.read() == ConfigText("version: v1\n", str(configmap / "config.yaml"))


def _failing_open(monkeypatch: pytest.MonkeyPatch, failure: Callable[[], OSError | None]) -> None:
    """``open`` raises what ``failure()`` returns, and opens as usual while it returns None."""
    real_open = open

    def patched(path: object, *args: object, **kwargs: object) -> object:
        error = failure()
        if error is not None:
            raise error
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", patched)


def test_case6_a_file_that_vanishes_between_finding_and_reading_is_read_on_the_next_poll(
    configmap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configmap(configmap, b"version: v1\ngpus: [{replicas: 2}]\n")
    source = FileConfigSource(configmap)
    failures = iter([FileNotFoundError(2, "No such file or directory")])  # the first open only
    _failing_open(monkeypatch, lambda: next(failures, None))
    assert source.read() is None  # no error for a race with the kubelet's swap
    found = source.read()
    assert found is not None and found.text == "version: v1\ngpus: [{replicas: 2}]\n"


def test_case6_permission_denied_is_an_error_tried_again_on_every_poll(
    configmap: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configmap(configmap, b"version: v1\n")
    source = FileConfigSource(configmap)
    denied = [True]
    _failing_open(monkeypatch, lambda: PermissionError(13, "Permission denied") if denied[0] else None)
    found = source.read()
    assert found is not None and found.error == f"cannot read {configmap / 'config.yaml'}: Permission denied"
    assert source.read() is None  # the same error is not delivered again
    denied[0] = False  # nothing about the file changed, yet the next poll reads it
    assert source.read() == ConfigText("version: v1\n", str(configmap / "config.yaml"))


# --- case 7: duplicate keys ------------------------------------------------------------------


def test_case7_a_duplicate_key_is_an_error_naming_both_places() -> None:
    message = error_of(
        "version: v1\ngpus:\n  - devices: all\n    replicas: 4\n    replicas: 1\n", source="config.yaml"
    )
    assert message == 'config.yaml:5:5: duplicate key "replicas" (first at line 4, column 5)'


def test_case7_a_duplicate_top_level_key_is_an_error() -> None:
    message = error_of("version: v1\ngpus: []\ngpus:\n  - replicas: 2\n")
    assert message == 'config:3:1: duplicate key "gpus" (first at line 2, column 1)'


def test_case7_duplicates_in_flow_mappings_and_of_other_types_are_errors() -> None:
    assert error_of("version: v1\ngpus: [{mig-devices: {1g.5gb: 1, 1g.5gb: 2}}]\n").startswith(
        'config:2:34: duplicate key "1g.5gb" (first at line 2, column 23)'
    )
    assert error_of("a: {1: x, 1: y}\n").startswith("config:1:11: duplicate key 1")


def test_a_merge_key_may_be_overridden_without_a_duplicate() -> None:
    assert yamlload.load("base: &b {x: 1}\nc: {<<: *b, x: 2}\n") == {"base": {"x": 1}, "c": {"x": 2}}


# --- more of the loader's rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\n---\nb: 2\n", "config:2:1: a second YAML document; fatia reads one (remove the '---')"),
        (
            "a: !!python/object:os.system x\n",
            "config:1:4: tag tag:yaml.org,2002:python/object:os.system is not",
        ),
        ("a: !!set {x}\n", "config:1:4: tag tag:yaml.org,2002:set is not supported here"),
        ("? [a]\n: b\n", "config:1:3: a key must be a plain value, not a list or a mapping"),
        ("a: *nothing\n", "config:1:4: alias *nothing names no anchor defined before it"),
        ("a: \x07\n", "config:1:4: not valid YAML: character #x0007: control characters are not allowed"),
        ("a: \ud800\n", "config:1:4: not text: a lone surrogate character (U+D800..U+DFFF)"),
    ],
)
def test_the_loader_refuses_with_a_position(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_a_long_value_is_cut_short_in_messages() -> None:
    message = error_of("version: v1\nmigStrategy: " + "x" * 500_000 + "\n")
    assert message.startswith("config: migStrategy: must be one of mixed, single, none, not 'xxx")
    assert len(message) < 200
    message = error_of("version: v1\n? " + "k" * 500_000 + "\n: 1\n")
    assert message.startswith("config: kkkk") and len(message) < 300


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("gpus: [" + ", ".join(["{}"] * 65) + "]", "config: gpus: 65 entries; at most 64"),
        (
            "gpus: [{devices: [" + ", ".join(["0"] * 65) + "]}]",
            "config: gpus[0].devices: 65 entries; at most 64",
        ),
        ("gpus: [{devices: [64]}]", "config: gpus[0].devices[0]: expected a GPU index (0 to 63)"),
        ("gpus: [{product: " + "x" * 257 + "}]", "config: gpus[0].product: 257 characters; at most 256"),
        (
            "gpus: [{mig-devices: {1g.5gb: 65}}]",
            "config: gpus[0].mig-devices.1g.5gb: must be at most 64, not 65",
        ),
        (
            "health: {fatalXids: [4294967296]}",
            "config: health.fatalXids[0]: expected an XID number (1 to 4294967295)",
        ),
        (
            "health: {ignoredXids: [" + ", ".join(["1"] * 1025) + "]}",
            "config: health.ignoredXids: 1025 entries",
        ),
    ],
)
def test_every_list_name_and_number_is_bounded(body: str, expected: str) -> None:
    assert error_of(f"version: v1\n{body}\n").startswith(expected)


# --- fatia plan on input that cannot be read --------------------------------------------------


def _plan(config: Path) -> subprocess.CompletedProcess[str]:
    return fatia_cli("plan", "--config", str(config), "--nvml", "sim:a100-40gb:1")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"version: v1\n\xff\xfe\n", ":2:1: not UTF-8 text: byte 0xff"),
        (b"version: v1\ngpus: " + b"[" * 3000 + b"]" * 3000 + b"\n", ":2:"),
        (b"version: v1\ngpus: " + b"{a: " * 100 + b"1" + b"}" * 100 + b"\n", ":2:"),
        (b"a: 1" + b"0" * 5000 + b"\n", ":1:4: a number of 5001 characters"),
        (b"#" * (limits.MAX_BYTES + 1), ": 1048577 bytes is larger than 1048576"),
    ],
)
def test_fatia_plan_exits_1_with_a_message_not_a_traceback(
    content: bytes, expected: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    result = _plan(config)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"fatia plan: {config}{expected}"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_fatia_plan_on_a_directory_exits_1(tmp_path: Path) -> None:
    result = _plan(tmp_path)
    assert (result.returncode, result.stderr) == (1, f"fatia plan: cannot read {tmp_path}: Is a directory\n")


def test_fatia_plan_reports_the_kubelet_limit(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\ngpus: [{devices: all, mig-devices: {1g.5gb: 7}, replicas: 9000}]\n")
    result = _plan(config)
    assert result.returncode == 1
    assert "error: gpus[0].replicas: 9000 replicas of 7 devices on 1 GPU is 63000 devices" in result.stdout
    assert "nvidia.com/mig-1g.5gb x63000" in result.stdout


def test_a_valid_config_still_gives_a_config() -> None:
    assert isinstance(parse_config("version: v1\ngpus: [{devices: all, replicas: 4}]\n"), Config)
