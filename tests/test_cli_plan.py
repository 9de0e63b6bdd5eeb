"""Specification of ``fatia plan`` and ``fatia export``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deviceplugin.cli.main import main
from deviceplugin.config.schema import parse_config
from deviceplugin.plan.node import plan_node
from deviceplugin.testing.daemon import fatia_cli
from mig.apply import GpuTarget, Reconciler
from mig.inventory import InventoryReader
from mig.layout import Placement, profile_counts
from mig.nvml import open_nvml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


class FatiaPlan:
    """``fatia plan --config CONFIG --nvml NVML EXTRA...`` in this process: exit status, stdout, stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, config: Path, nvml: str, *extra: str) -> tuple[int, str, str]:
        code = main(["plan", "--config", str(config), "--nvml", nvml, *extra])
        out, err = self._capsys.readouterr()
        return code, out, err


@pytest.fixture
def plan(capsys: pytest.CaptureFixture[str]) -> FatiaPlan:
    return FatiaPlan(capsys)


# --- fatia plan -----------------------------------------------------------------------------


def test_plan_json_describes_every_gpu(plan: FatiaPlan) -> None:
    code, out, _ = plan(EXAMPLES / "mig-per-gpu-mixed.yaml", "sim:a100-40gb:4", "--output", "json")
    assert code == 0
    report = json.loads(out)
    assert report["config"] == parse_config((EXAMPLES / "mig-per-gpu-mixed.yaml").read_text()).digest
    gpus = report["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert {g["model"] for g in gpus} == {"NVIDIA A100-SXM4-40GB"}
    assert all(g["feasible"] and g["error"] is None for g in gpus)
    assert gpus[0]["instances"] == []
    assert gpus[0]["resources"] == {"nvidia.com/gpu": 2}
    assert gpus[2]["instances"] == [
        {"profile": "3g.20gb", "start": 0, "size": 4},
        {"profile": "3g.20gb", "start": 4, "size": 4},
    ]
    assert gpus[3]["instances"] == [
        {"profile": "4g.20gb", "start": 0, "size": 4},
        {"profile": "3g.20gb", "start": 4, "size": 4},
    ]
    assert gpus[1]["resources"] == {"nvidia.com/mig-1g.5gb": 28}


def test_plan_json_keys(plan: FatiaPlan) -> None:
    _, out, _ = plan(EXAMPLES / "mig-all-balanced.yaml", "sim:a100-40gb:1", "--output", "json")
    (gpu,) = json.loads(out)["gpus"]
    assert {"index", "model", "feasible", "instances", "resources", "error"} <= set(gpu)
    assert [i["start"] for i in gpu["instances"] if i["profile"] == "3g.20gb"] == [4]


def test_plan_table_shows_placements_and_resources(plan: FatiaPlan) -> None:
    code, out, _ = plan(EXAMPLES / "mig-all-balanced.yaml", "sim:a100-40gb:2,h100-80gb:1")
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith("warning: ")]
    assert lines[0].split() == ["GPU", "MODEL", "OK", "INSTANCES", "RESOURCES"]
    assert len(lines) == 4
    assert "2g.10gb@0, 1g.5gb@2, 1g.5gb@3, 3g.20gb@4" in lines[1]
    assert "nvidia.com/mig-1g.5gb x2" in lines[1]
    assert "whole GPU" in lines[3] and "nvidia.com/gpu x1" in lines[3]


def test_device_plugin_mode_accepts_and_ignores_the_dra_block(tmp_path: Path, plan: FatiaPlan) -> None:
    text = (EXAMPLES / "mig-all-balanced.yaml").read_text()
    policy = "dra: {reuse: identical, taintEffect: NoExecute}\n"
    _, without, _ = plan(write(tmp_path, text), "sim:a100-40gb:1", "--output", "json")
    code, out, _ = plan(write(tmp_path, text + policy), "sim:a100-40gb:1", "--output", "json")
    assert code == 0 and json.loads(out)["gpus"] == json.loads(without)["gpus"]


def test_plan_infeasible_exits_1_and_shows_the_error(tmp_path: Path, plan: FatiaPlan) -> None:
    config = write(tmp_path, "version: v1\ngpus: [{devices: [1], mig-devices: {3g.20gb: 3}}]\n")
    code, out, _ = plan(config, "sim:a100-40gb:2")
    assert code == 1
    assert "NO" in out.splitlines()[2]
    assert "error: gpus[0] (GPU 1, NVIDIA A100-SXM4-40GB): at most 2 instances of 3g.20gb" in out


def test_plan_infeasible_json_names_the_error(tmp_path: Path, plan: FatiaPlan) -> None:
    config = write(tmp_path, "version: v1\ngpus: [{devices: [1], mig-devices: {1g.6gb: 1}}]\n")
    code, out, _ = plan(config, "sim:a100-40gb:2", "--output", "json")
    assert code == 1
    gpus = json.loads(out)["gpus"]
    assert [g["feasible"] for g in gpus] == [True, False]
    assert gpus[1]["error"].startswith("gpus[0] (GPU 1, NVIDIA A100-SXM4-40GB): unknown profile")


def test_plan_invalid_config_exits_1_with_the_key_path(tmp_path: Path, plan: FatiaPlan) -> None:
    config = write(tmp_path, "version: v1\ngpus: [{devices: all, replicas: 0}]\n")
    code, out, err = plan(config, "sim:a100-40gb:1")
    assert code == 1
    assert out == ""
    assert f"{config}: gpus[0].replicas: must be at least 1, not 0" in err


def test_plan_unreadable_config_exits_1(tmp_path: Path, plan: FatiaPlan) -> None:
    code, _, err = plan(tmp_path / "missing.yaml", "sim:a100-40gb:1")
    assert code == 1
    assert "cannot read" in err


def test_plan_unknown_sim_model_exits_1(tmp_path: Path, plan: FatiaPlan) -> None:
    code, _, err = plan(EXAMPLES / "time-slicing.yaml", "sim:x900:1")
    assert code == 1
    assert "x900" in err


def test_plan_without_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["plan", "--nvml", "sim:a100-40gb:1"])
    assert caught.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_plan_with_an_unknown_output_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["plan", "--config", "x", "--nvml", "sim:a100-40gb:1", "--output", "yaml"])
    assert caught.value.code == 2


def test_plan_as_a_process_touches_no_state(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home")}
    env.pop("FATIA_STATE_DIR", None)
    done = fatia_cli(
        "plan",
        "--config",
        str(EXAMPLES / "mig-all-balanced.yaml"),
        "--nvml",
        "sim:a100-40gb:2",
        "--output",
        "json",
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert [g["feasible"] for g in json.loads(done.stdout)["gpus"]] == [True, True]
    assert list(cwd.iterdir()) == []
    assert not (tmp_path / "home").exists()


def test_plan_as_a_process_exits_2_on_usage_errors(tmp_path: Path) -> None:
    done = fatia_cli("plan", cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2


def test_plan_of_a_mig_parted_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plan: FatiaPlan
) -> None:
    config = write(
        tmp_path,
        "version: v1\nmig-configs:\n  all-3g:\n"
        "    - {devices: all, mig-enabled: true, mig-devices: {3g.40gb: 2}}\n",
    )
    code, out, _ = plan(config, "sim:h100-80gb:1", "--output", "json")
    assert code == 0
    assert json.loads(out)["gpus"][0]["resources"] == {"nvidia.com/mig-3g.40gb": 2}


# --- fatia export ---------------------------------------------------------------------------


def mig_node(state: Path, layouts: list[tuple[Placement, ...]]) -> None:
    """A simulated H100 node with one GPU per layout, applied by the reconciler."""
    nvml = open_nvml(f"sim:h100-80gb:{len(layouts)}", state_dir=state, node_name="n")
    inventory = InventoryReader(nvml).read()
    result = Reconciler(nvml, state_dir=state).apply(
        [
            GpuTarget(gpu.index, gpu.uuid, True, layout)
            for gpu, layout in zip(inventory.gpus, layouts, strict=True)
        ]
    )
    assert result.done


def export(capsys: pytest.CaptureFixture[str], state: Path, gpus: int) -> str:
    capsys.readouterr()  # what setting the node up logged
    code = main(["export", "--nvml", f"sim:h100-80gb:{gpus}", "--state-dir", str(state), "--node-name", "n"])
    assert code == 0
    return capsys.readouterr().out


BALANCED = (
    Placement(0, 2, "2g.20gb"),
    Placement(2, 1, "1g.10gb"),
    Placement(3, 1, "1g.10gb"),
    Placement(4, 4, "3g.40gb"),
)
HALVES = (Placement(0, 4, "3g.40gb"), Placement(4, 4, "3g.40gb"))


def round_trip(state: Path, text: str, gpus: int) -> list[dict[str, int]]:
    nvml = open_nvml(f"sim:h100-80gb:{gpus}", state_dir=state, node_name="n")
    inventory = InventoryReader(nvml).read()
    plans = plan_node(inventory, parse_config(text, source="export"))
    assert all(p.target is not None for p in plans), [p.error for p in plans]
    layouts = [p.target.layout for p in plans if p.target is not None]
    assert layouts == [g.layout for g in inventory.gpus]
    return [profile_counts(layout) for layout in layouts]


def test_export_of_one_layout_everywhere_says_devices_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mig_node(tmp_path, [BALANCED, BALANCED])
    text = export(capsys, tmp_path, 2)
    config = parse_config(text)
    (rule,) = config.gpus
    assert rule.devices is None
    assert rule.mig_enabled
    assert rule.desired == {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}


def test_export_round_trips_through_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mig_node(tmp_path, [BALANCED, HALVES, BALANCED])
    text = export(capsys, tmp_path, 3)
    assert [r.devices for r in parse_config(text).gpus] == [(0, 2), (1,)]
    assert round_trip(tmp_path, text, 3) == [
        profile_counts(BALANCED),
        profile_counts(HALVES),
        profile_counts(BALANCED),
    ]


def test_export_of_mig_off_gpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_nvml("sim:h100-80gb:2", state_dir=tmp_path, node_name="n")
    (rule,) = parse_config(export(capsys, tmp_path, 2)).gpus
    assert (rule.devices, rule.mig_enabled, rule.mig_devices) == (None, False, ())


def test_export_of_mig_mode_with_no_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mig_node(tmp_path, [(), HALVES])
    text = export(capsys, tmp_path, 2)
    rules = parse_config(text).gpus
    assert [(r.devices, r.mig_enabled, r.desired) for r in rules] == [
        ((0,), True, {}),
        ((1,), True, {"3g.40gb": 2}),
    ]
    round_trip(tmp_path, text, 2)


def test_export_does_not_say_all_when_a_gpu_cannot_be_described(tmp_path: Path) -> None:
    import dataclasses

    from deviceplugin.config.export import export_config

    mig_node(tmp_path, [HALVES, HALVES])
    nvml = open_nvml("sim:h100-80gb:2", state_dir=tmp_path, node_name="n")
    inventory = InventoryReader(nvml).read()
    lost = dataclasses.replace(inventory.gpus[1], lost=True)
    inventory = dataclasses.replace(inventory, gpus=(inventory.gpus[0], lost))
    (rule,) = parse_config(export_config(inventory)).gpus
    assert rule.devices == (0,)


def test_export_leaves_a_gpu_without_mig_out_and_plans_cleanly(tmp_path: Path) -> None:
    import dataclasses

    from deviceplugin.config.export import export_config

    mig_node(tmp_path, [HALVES, HALVES])
    nvml = open_nvml("sim:h100-80gb:2", state_dir=tmp_path, node_name="n")
    inventory = InventoryReader(nvml).read()
    plain = dataclasses.replace(
        inventory.gpus[1], mig_capable=False, mig_enabled=False, gpu_instances=(), profiles=()
    )
    inventory = dataclasses.replace(inventory, gpus=(inventory.gpus[0], plain))
    config = parse_config(export_config(inventory))
    assert [r.devices for r in config.gpus] == [(0,)]
    plans = plan_node(inventory, config)
    assert all(p.feasible for p in plans)
    assert plans[1].target is None
