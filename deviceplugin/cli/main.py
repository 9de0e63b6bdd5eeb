"""The ``fatia`` command: run, plan, status, export, sim and demo.

Every ``run`` flag can also come from an environment variable ``FATIA_<FLAG>``
(``--state-dir`` -> ``FATIA_STATE_DIR``); the node name and namespace also from
``NODE_NAME`` and ``POD_NAMESPACE`` as the downward API sets them. Exit codes:
0 success, 1 failure (invalid or infeasible config, NVML unavailable, ...),
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_POD_RESOURCES = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_STATE_DIR = "/var/lib/fatia"
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"
DEFAULT_CDI_DIR = "/var/run/cdi"
MODES = ("device-plugin", "dra")


def _env(flag: str, *fallbacks: str, default: str | None = None) -> str | None:
    for name in (f"FATIA_{flag.upper().replace('-', '_')}", *fallbacks):
        if os.environ.get(name):
            return os.environ[name]
    return default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fatia", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the node daemon")
    run.add_argument("--node-name", default=_env("node-name", "NODE_NAME", default=socket.gethostname()))
    run.add_argument(
        "--mode",
        choices=MODES,
        default=_env("mode", default="device-plugin"),
        help="device-plugin (the default) or dra: a DRA driver that cuts MIG slices on demand",
    )
    run.add_argument(
        "--kubelet-dir",
        type=Path,
        default=Path(_env("kubelet-dir", default=DEFAULT_KUBELET_DIR) or ""),
        help="DRA mode: the kubelet's root (plugins_registry/ and plugins/ are in it)",
    )
    run.add_argument(
        "--cdi-dir",
        type=Path,
        default=Path(_env("cdi-dir", default=DEFAULT_CDI_DIR) or ""),
        help="DRA mode: where CDI specs for prepared claims are written",
    )
    run.add_argument(
        "--device-plugin-dir",
        type=Path,
        default=Path(_env("device-plugin-dir", default=DEFAULT_PLUGIN_DIR) or ""),
    )
    run.add_argument(
        "--pod-resources-socket",
        type=Path,
        default=Path(_env("pod-resources-socket", default=DEFAULT_POD_RESOURCES) or ""),
    )
    run.add_argument(
        "--config",
        type=Path,
        default=_env("config"),
        help="a config file, or a mounted ConfigMap directory (key config.yaml)",
    )
    run.add_argument("--kubeconfig", default=_env("kubeconfig", "KUBECONFIG"))
    run.add_argument("--namespace", default=_env("namespace", "POD_NAMESPACE"))
    run.add_argument("--nvml", default=_env("nvml", default="real"), help="real | sim:SPEC")
    run.add_argument(
        "--state-dir", type=Path, default=Path(_env("state-dir", default=DEFAULT_STATE_DIR) or "")
    )
    run.add_argument("--metrics-addr", default=_env("metrics-addr"), help="HOST:PORT")
    run.add_argument(
        "--log-format", choices=("json", "console"), default=_env("log-format", default="console")
    )

    plan = sub.add_parser("plan", help="validate and plan a config offline")
    plan.add_argument("--config", type=Path, required=True)
    plan.add_argument("--nvml", required=True, help="sim:SPEC (or real, read-only)")
    plan.add_argument("--output", choices=("table", "json"), default="table")
    plan.add_argument(
        "--mode", choices=MODES, default="device-plugin", help="dra: print the ResourceSlices (YAML)"
    )

    status = sub.add_parser("status", help="what the agent on this node is doing")
    status.add_argument(
        "--state-dir", type=Path, default=Path(_env("state-dir", default=DEFAULT_STATE_DIR) or "")
    )
    status.add_argument("--output", choices=("table", "json"), default="table")

    export = sub.add_parser("export", help="write the node's current layout as a fatia config")
    export.add_argument("--nvml", default=_env("nvml", default="real"))
    export.add_argument(
        "--state-dir", type=Path, default=Path(_env("state-dir", default=DEFAULT_STATE_DIR) or "")
    )
    export.add_argument("--node-name", default=_env("node-name", "NODE_NAME", default=socket.gethostname()))

    sim = sub.add_parser("sim", help="act on a simulated node (tests and demos)")
    sim.add_argument("--state-dir", type=Path, required=True)
    actions = sim.add_subparsers(dest="action", required=True)
    xid = actions.add_parser("xid", help="deliver an XID event")
    xid.add_argument("--gpu", type=int, required=True)
    xid.add_argument("--xid", type=int, required=True)
    xid.add_argument("--gpu-instance", type=int)
    xid.add_argument("--compute-instance", type=int)
    for name, text in (
        ("lose", "the GPU falls off the bus"),
        ("recover", "a lost GPU is back"),
        ("reset", "reset a GPU (applies a pending MIG mode)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--gpu", type=int, required=True)
    actions.add_parser("reboot", help="reboot the node")
    actions.add_parser("show", help="print the simulated state")
    start = actions.add_parser("start-process", help="run a process on a GPU or MIG device")
    start.add_argument("--gpu", type=int, required=True)
    start.add_argument("--gpu-instance", type=int)
    start.add_argument("--compute-instance", type=int)
    stop = actions.add_parser("stop-process", help="end a process")
    stop.add_argument("pid", type=int)
    fault = actions.add_parser("fault", help="make coming NVML calls fail")
    fault.add_argument("--call", required=True, help="an NVML function name, or 'mutating'")
    fault.add_argument("--error", default="UNKNOWN", help="NVML error: a number or a name (NOT_SUPPORTED)")
    times = fault.add_mutually_exclusive_group()
    times.add_argument("--count", type=int, default=1, help="how many matching calls fail")
    times.add_argument("--always", action="store_true", help="every matching call fails until cleared")
    fault.add_argument("--skip", type=int, default=0, help="matching calls that pass first")
    fault.add_argument("--gpu", type=int, help="only calls on this GPU (or its MIG devices)")
    # dest: "action" is the sim subcommand's own selector
    fault.add_argument("--action", dest="fault_action", choices=("raise", "kill"), default="raise")
    fault.add_argument("--when", choices=("before", "after"), default="before")
    actions.add_parser("clear-faults", help="remove every injected fault")
    clients = actions.add_parser("clients", help="other processes (DCGM, ...) holding a GPU open")
    clients.add_argument("--gpu", type=int, required=True)
    clients.add_argument("--count", type=int, required=True)
    passthrough = actions.add_parser("passthrough", help="the node is a VM whose GPUs cannot be reset")
    passthrough.add_argument("state", choices=("on", "off"))

    demo = sub.add_parser("demo", help="the whole thing on a simulated node")
    demo.add_argument("--keep", action="store_true", help="keep the demo's directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from deviceplugin.telemetry import logs
    from mig.errors import FatiaError

    if args.command != "run":
        logs.configure("console")  # on stderr: stdout carries the command's output

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "status":
            return _status(args)
        if args.command == "export":
            return _export(args)
        if args.command == "sim":
            return _sim(args)
        from deviceplugin.cli.demo import run_demo

        return run_demo(keep=args.keep)
    except FatiaError as exc:
        print(f"fatia {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from deviceplugin.cli.daemon import Daemon, DaemonOptions
    from deviceplugin.telemetry import logs

    logs.configure(args.log_format)
    options = DaemonOptions(
        node_name=args.node_name,
        plugin_dir=args.device_plugin_dir,
        pod_resources_socket=args.pod_resources_socket,
        config=args.config,
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        nvml=args.nvml,
        state_dir=args.state_dir,
        metrics_addr=args.metrics_addr,
        mode=args.mode,
        kubelet_dir=args.kubelet_dir,
        cdi_dir=args.cdi_dir,
    )
    daemon = Daemon(options)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()
    return 0


def _plan(args: argparse.Namespace) -> int:
    from deviceplugin.config.limits import MAX_BYTES
    from deviceplugin.config.schema import parse_config
    from deviceplugin.config.yamlload import DocumentError, decode
    from deviceplugin.plan.node import layout_of, plan_node, planned_resources
    from deviceplugin.plan.warnings import config_warnings
    from mig.inventory import InventoryReader
    from mig.nvml import open_nvml

    try:
        with open(args.config, "rb") as f:
            text = decode(f.read(MAX_BYTES + 1))  # a larger file is refused, not read whole
    except OSError as exc:
        print(f"fatia plan: cannot read {args.config}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except DocumentError as exc:
        where = f"{args.config}:{exc.line}:{exc.column}" if exc.line is not None else str(args.config)
        print(f"fatia plan: {where}: {exc.problem}", file=sys.stderr)
        return 1
    config = parse_config(text, source=str(args.config))
    with tempfile.TemporaryDirectory(prefix="fatia-plan-") as scratch:
        nvml = open_nvml(args.nvml, state_dir=Path(scratch), node_name="plan")
        inventory = InventoryReader(nvml).read()
        if args.mode == "dra":
            from deviceplugin.dra.plan import print_plan

            return print_plan(inventory, config, nvml=nvml)
    plans = plan_node(inventory, config)
    yields = planned_resources(inventory, plans, config)
    report: list[dict[str, Any]] = [
        {
            "index": p.gpu.index,
            "model": p.gpu.product,
            "feasible": p.feasible,
            "mig": bool(p.target.mig_enabled) if p.target else p.gpu.mig_enabled,
            "instances": [{"profile": i.profile, "start": i.start, "size": i.size} for i in layout_of(p)],
            "resources": yields.get(p.gpu.index, {}),
            "error": p.error,
        }
        for p in plans
    ]
    warnings = config_warnings(config, {name for gpu in report for name in gpu["resources"]})
    if args.output == "json":
        print(json.dumps({"config": config.digest, "gpus": report, "warnings": warnings}, indent=2))
    else:
        print(f"{'GPU':<4} {'MODEL':<24} {'OK':<4} {'INSTANCES':<40} RESOURCES")
        for gpu in report:
            instances = ", ".join(f"{i['profile']}@{i['start']}" for i in gpu["instances"])
            resources = ", ".join(f"{n} x{c}" for n, c in sorted(gpu["resources"].items()))
            print(
                f"{gpu['index']:<4} {gpu['model'][:24]:<24} {'yes' if gpu['feasible'] else 'NO':<4}"
                f" {instances or ('MIG, empty' if gpu['mig'] else 'whole GPU'):<40} {resources}"
            )
            if gpu["error"]:
                print(f"     error: {gpu['error']}")
        for warning in warnings:
            print(f"warning: {warning}")
    return 0 if all(g["feasible"] for g in report) else 1


def _status(args: argparse.Namespace) -> int:
    from deviceplugin.agent.status import format_table, read_status

    try:
        status = read_status(args.state_dir)
    except FileNotFoundError:
        print(f"fatia status: no agent status in {args.state_dir} (is fatia running there?)", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.output == "json" else format_table(status))
    return 0 if status["phase"] != "failed" else 1


def _export(args: argparse.Namespace) -> int:
    from deviceplugin.config.export import export_config
    from mig.inventory import InventoryReader
    from mig.nvml import open_nvml

    nvml = open_nvml(args.nvml, state_dir=args.state_dir, node_name=args.node_name)
    inventory = InventoryReader(nvml).read()
    for gpu in inventory.gpus:  # exported without a rule, so fatia leaves them as they are
        if gpu.problem is not None:
            print(f"fatia export: {gpu.problem}; it gets no rule", file=sys.stderr)
    print(export_config(inventory), end="")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from mig.sim.nvml import SimControl
    from mig.sim.state import SimFault, nvml_error_code

    control = SimControl(args.state_dir)
    if not control.store.exists():
        print(f"fatia sim: no simulated node in {args.state_dir}", file=sys.stderr)
        return 1
    action = args.action
    if action == "xid":
        control.inject_event(
            args.gpu,
            data=args.xid,
            gpu_instance=0xFFFFFFFF if args.gpu_instance is None else args.gpu_instance,
            compute_instance=0xFFFFFFFF if args.compute_instance is None else args.compute_instance,
        )
    elif action in ("lose", "recover"):
        control.set_lost(args.gpu, action == "lose")
    elif action == "reset":
        control.reset_gpu(args.gpu)
    elif action == "reboot":
        control.reboot()
    elif action == "start-process":
        print(
            control.start_process(
                args.gpu, gpu_instance=args.gpu_instance, compute_instance=args.compute_instance
            )
        )
    elif action == "stop-process":
        control.stop_process(args.pid)
    elif action == "fault":
        control.inject_fault(
            SimFault(
                call=args.call,
                error=nvml_error_code(args.error),
                count=None if args.always else args.count,
                skip=args.skip,
                gpu=args.gpu,
                action=args.fault_action,
                when=args.when,
            )
        )
    elif action == "clear-faults":
        control.clear_faults()
    elif action == "clients":
        control.set_clients(args.gpu, args.count)
    elif action == "passthrough":
        control.set_passthrough(args.state == "on")
    else:
        print(control.node().to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
