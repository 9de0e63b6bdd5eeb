"""A one-node Kubernetes cluster on loopback for the e2e tier, and fatia run against it.

:class:`Cluster` boots, from the binaries ``make e2e-build`` puts in
``$FATIA_E2E_BIN``: etcd, kube-apiserver (RBAC and Node authorizers, NodeRestriction,
service-account token signing, TLS from a throw-away CA), kube-controller-manager,
kube-scheduler, our fake CRI and a real kubelet registered as Node ``e2e-node``.
Everything listens on 127.0.0.1 only.

The node side (fake CRI, kubelet, every ``fatia run``) lives in a private mount
namespace held by ``nsholder.py``, where ``/var/lib``, ``/var/log``, ``/run`` and the
sysctl files the kubelet rewrites are bind mounts of a temporary directory. The
kubelet's hard-coded ``/var/lib/kubelet/device-plugins`` is therefore a temporary
directory too, and fatia, run in the same namespace with its default paths, finds the
kubelet the way the DaemonSet's hostPath mounts would let it. After teardown the host's
sysctls and cgroups are checked to be unchanged.

Every process runs in its own process group under ``timeout`` (so that it ends even if
the harness is killed) and is stopped at teardown; :meth:`Cluster.leftovers` lists any
process that still runs from this cluster's directory.

The API is read through :class:`Api` (plain HTTPS with the admin client certificate:
cheap enough to poll every 100 ms); what users do goes through ``kubectl``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
KUBECTL = VENV_BIN / "kubectl"
FATIA = VENV_BIN / "fatia"
NODE_NAME = "e2e-node"
NAMESPACE = "fatia-system"
STATUS_ANNOTATION = "fatia.dev/config.status"
NVML_SPEC = "sim:a100-40gb:1,h100-80gb:1"

# The sysctls the kubelet's container manager checks and, unless
# protectKernelDefaults is set, rewrites (setupKernelTunables). Inside the node's
# namespace each is a bind mount of a file holding the host's value.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Host directories the node side writes to, replaced inside its namespace.
NODE_DIRS = ("/var/lib", "/var/log", "/run")

# Upper bounds on the life of every process started here, if teardown never comes.
CLUSTER_LIFETIME_S = int(os.environ.get("FATIA_E2E_LIFETIME_S", "5400"))
FATIA_LIFETIME_S = 900

T = TypeVar("T")

# Logs worth seeing when a test fails: name -> reader of its tail (conftest adds them
# to the failure report).
FAILURE_LOGS: dict[str, Callable[[], str]] = {}


class E2EError(AssertionError):
    """A condition of the cluster or of fatia was not met in time."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise E2EError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def fatia_env() -> dict[str, str]:
    """The environment of every fatia command: none of fatia's own FATIA_* settings.

    ``FATIA_E2E_PYTHONPATH`` (development only) puts another checkout's fatia first,
    e.g. a snapshot of HEAD while the working tree is mid-edit.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FATIA_", "KUBE"))}
    env["GRPC_VERBOSITY"] = "ERROR"
    if os.environ.get("FATIA_E2E_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["FATIA_E2E_PYTHONPATH"]
    return env


def http_ok(url: str) -> bool:
    """A GET of ``url`` (a loopback health endpoint) answers 200 within two seconds."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
            return bool(response.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- processes ------------------------------------------------------------------------


@dataclass
class Process:
    """One started program: its own process group, its output in ``log``."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; the exit status."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        # Children that outlived the leader (the group is gone only when they are).
        self.signal(signal.SIGKILL)
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class Processes:
    """Starts programs bounded in time, each in its own process group; stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Process] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        lifetime_s: int,
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> Process:
        count = sum(1 for p in self.started if p.name == name)
        log = self.log_dir / (f"{name}.log" if count == 0 else f"{name}.{count}.log")
        # timeout(1) ends the program if the harness never does; -k: SIGKILL 10 s later.
        bounded = ["timeout", "-k", "10", str(lifetime_s), *argv]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                bounded,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                start_new_session=True,
            )
        process = Process(name, list(argv), popen, log)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


# -- certificates ---------------------------------------------------------------------

_OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


class Pki:
    """A throw-away CA and the certificates and keys the cluster needs (openssl, P-256)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True)
        self.config = directory / "openssl.cnf"
        self.config.write_text(_OPENSSL_CONFIG)
        self.ca = directory / "ca.crt"
        self.ca_key = directory / "ca.key"

    def _req(self, name: str, subject: str, extensions: Sequence[str], *, signed: bool) -> list[str]:
        argv = [
            "openssl",
            "req",
            "-x509",
            "-new",
            "-config",
            str(self.config),
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            str(self.dir / f"{name}.key"),
            "-out",
            str(self.dir / f"{name}.crt"),
            "-subj",
            subject,
            "-days",
            "3",
        ]
        if signed:
            argv += ["-CA", str(self.ca), "-CAkey", str(self.ca_key)]
        for ext in extensions:
            argv += ["-addext", ext]
        return argv

    def generate(self) -> None:
        _run(
            self._req(
                "ca",
                "/CN=fatia-e2e-ca",
                [
                    "basicConstraints=critical,CA:TRUE",
                    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                ],
                signed=False,
            )
        )
        leaf = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
        client = [*leaf, "extendedKeyUsage=clientAuth"]
        jobs = [
            self._req(
                "apiserver",
                "/CN=kube-apiserver",
                [
                    *leaf,
                    "extendedKeyUsage=serverAuth",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,"
                    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
                ],
                signed=True,
            ),
            self._req("admin", "/O=system:masters/CN=fatia-e2e-admin", client, signed=True),
            self._req("scheduler", "/CN=system:kube-scheduler", client, signed=True),
            self._req("controller-manager", "/CN=system:kube-controller-manager", client, signed=True),
            self._req("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", client, signed=True),
            # The service-account token signing key (ES256) and its public half.
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(self.dir / "sa.key"),
            ],
        ]
        running = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for argv in jobs]
        for argv, job in zip(jobs, running, strict=True):
            _, err = job.communicate(timeout=60)
            if job.returncode != 0:
                raise E2EError(f"{' '.join(argv)} failed: {err.decode()}")
        _run(
            ["openssl", "pkey", "-in", str(self.dir / "sa.key"), "-pubout", "-out", str(self.dir / "sa.pub")]
        )

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False, **kwargs)
    if done.returncode != 0:
        raise E2EError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()}")
    return done


def kubeconfig(
    path: Path, *, server: str, ca: Path, user: dict[str, str], namespace: str = "default"
) -> Path:
    """Write a kubeconfig with one cluster, one user and one context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "e2e", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": namespace}}],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


# -- the API, read directly -----------------------------------------------------------


class Api:
    """GETs (and a few writes) against the API server with the admin certificate."""

    def __init__(self, port: int, pki: Pki) -> None:
        self.port = port
        self._context = ssl.create_default_context(cafile=str(pki.ca))
        self._context.load_cert_chain(str(pki.cert("admin")), str(pki.key("admin")))
        self._conn: http.client.HTTPSConnection | None = None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self._context, timeout=10
                )
            try:
                headers = {"Accept": "application/json"}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["Content-Type"] = content_type
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                text = raw.decode(errors="replace")
                try:
                    return response.status, json.loads(text) if text else None
                except ValueError:
                    return response.status, text
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise E2EError(f"GET {path}: HTTP {status}: {body}")
        return body

    def get_or_none(self, path: str) -> Any:
        status, body = self.request("GET", path)
        return body if status == 200 else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- the cluster ----------------------------------------------------------------------


@dataclass
class Ports:
    etcd: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    kubelet: int = field(default_factory=free_port)
    kubelet_healthz: int = field(default_factory=free_port)


def host_sysctls() -> dict[str, str]:
    return {name: Path("/proc/sys", name).read_text() for name in KUBELET_SYSCTLS}


def host_cgroups() -> set[str]:
    """The top two levels of every cgroup hierarchy: where a kubelet would add kubepods."""
    root = Path("/sys/fs/cgroup")
    found: set[str] = set()
    for hierarchy in root.iterdir() if root.is_dir() else ():
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            with contextlib.suppress(OSError):
                found.update(str(p) for p in hierarchy.iterdir() if p.is_dir())
    return found


class Cluster:
    """The one-node cluster: boot, kubectl, the Node, the kubelet, the fake CRI's record."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        for binary in (
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "fakecri",
        ):
            if not (bin_dir / binary).is_file():
                raise E2EError(f"{bin_dir / binary} is missing: run make e2e-build")
        # Short: unix socket paths are limited to 107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="fatia-e2e-", dir="/tmp"))
        self.logs = self.base / "logs"
        self.logs.mkdir()
        self.scratch = self.base / "scratch"  # cwd of the control plane
        self.scratch.mkdir()
        self.node_root = self.base / "node"  # what the node's namespace sees
        self.kubelet_cwd = self.base / "kubelet-cwd"
        self.ports = Ports()
        self.pki = Pki(self.base / "pki")
        self.processes = Processes(self.logs)
        self.server = f"https://127.0.0.1:{self.ports.apiserver}"
        self.admin_kubeconfig = self.base / "admin.kubeconfig"
        self.fatia_kubeconfig = self.base / "fatia.kubeconfig"
        self.record = self.on_host("/var/lib/fakecri/containers.jsonl")
        self.sysctls_before = host_sysctls()
        self.cgroups_before = host_cgroups()
        self.holder: Process | None = None
        self.kubelet: Process | None = None
        self.fakecri: Process | None = None
        self.api: Api | None = None
        self.timings: dict[str, float] = {}
        self.node_status_update_frequency = "1s"
        # The kubelet binary the node runs now (tests may swap in another version).
        self.kubelet_binary = bin_dir / "kubelet"

    # -- paths as the node's namespace sees them, and as the host does -------------------

    def on_host(self, node_path: str | Path) -> Path:
        """Where ``/var/lib/...`` (etc.) of the node's namespace is on the host."""
        node_path = Path(node_path)
        for directory in NODE_DIRS:
            with contextlib.suppress(ValueError):
                rest = node_path.relative_to(directory)
                return (
                    self.node_root
                    / (
                        "var-lib"
                        if directory == "/var/lib"
                        else "var-log"
                        if directory == "/var/log"
                        else "run"
                    )
                    / rest
                )
        raise ValueError(f"{node_path} is not under {NODE_DIRS}")

    # -- boot -------------------------------------------------------------------------

    def boot(self) -> None:
        start = time.monotonic()
        holder = self._start_namespace()
        self.pki.generate()
        self._write_kubeconfigs()
        self.timings["pki"] = time.monotonic() - start
        etcd = self._start_etcd()
        apiserver = self._start_apiserver()
        self.fakecri = self._start_fakecri(holder)
        self.api = Api(self.ports.apiserver, self.pki)
        wait_for(
            lambda: self._healthy(etcd, f"http://127.0.0.1:{self.ports.etcd}/health"),
            60,
            "etcd to be healthy",
        )
        self.timings["etcd"] = time.monotonic() - start
        wait_for(lambda: self._api_ready(apiserver), 120, "kube-apiserver /readyz")
        self.timings["apiserver"] = time.monotonic() - start
        self._start_controller_manager()
        self._start_scheduler()
        self.kubelet = self.start_kubelet()
        self.wait_node_ready(120)
        self.timings["node-ready"] = time.monotonic() - start
        wait_for(
            lambda: (
                self.api is not None
                and self.api.get_or_none("/api/v1/namespaces/default/serviceaccounts/default")
            ),
            60,
            "the default service account",
        )
        self.timings["boot"] = time.monotonic() - start

    def _start_namespace(self) -> Process:
        binds: list[tuple[str, str]] = []
        for directory in NODE_DIRS:
            source = self.on_host(Path(directory) / "x").parent
            source.mkdir(parents=True)
            binds.append((str(source), directory))
        sysctl_dir = self.node_root / "sysctl"
        for name in KUBELET_SYSCTLS:
            copy = sysctl_dir / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(self.sysctls_before[name])
            binds.append((str(copy), f"/proc/sys/{name}"))
        self.on_host("/var/lib/fakecri").mkdir()
        self.kubelet_cwd.mkdir()
        self.holder = self._start(
            "nsholder",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                str(HERE / "nsholder.py"),
                os.readlink("/proc/self/ns/mnt"),
                json.dumps(binds),
            ],
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        assert self.holder.popen.stdout is not None
        line = self.holder.popen.stdout.readline().decode().strip()
        if line != "ready":
            raise E2EError(f"the namespace holder did not start: {self.holder.output()}")
        return self.holder

    def in_node(self, argv: Sequence[str], *, cwd: str = "/") -> list[str]:
        """``argv`` run inside the node's mount namespace, with working directory ``cwd``."""
        assert self.holder is not None
        # timeout(1) runs nsenter, whose pid the holder's namespace is entered by.
        return ["nsenter", f"--mount=/proc/{self._holder_pid()}/ns/mnt", f"--wd={cwd}", "--", *argv]

    def _holder_pid(self) -> int:
        """The namespace holder itself: timeout(1)'s child."""
        assert self.holder is not None
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        pids = children.read_text().split()
        if len(pids) != 1:
            raise E2EError(f"the namespace holder is gone: {self.holder.output()}")
        # Never run the node side in the host's namespace by mistake.
        if os.readlink(f"/proc/{pids[0]}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            raise E2EError(f"process {pids[0]} is not in a private mount namespace")
        return int(pids[0])

    def _write_kubeconfigs(self) -> None:
        kubeconfig(
            self.admin_kubeconfig,
            server=self.server,
            ca=self.pki.ca,
            user={
                "client-certificate": str(self.pki.cert("admin")),
                "client-key": str(self.pki.key("admin")),
            },
        )
        for name in ("scheduler", "controller-manager", "kubelet"):
            kubeconfig(
                self.base / f"{name}.kubeconfig",
                server=self.server,
                ca=self.pki.ca,
                user={"client-certificate": str(self.pki.cert(name)), "client-key": str(self.pki.key(name))},
            )

    def _healthy(self, process: Process, url: str) -> bool:
        self._check_alive(process)
        import urllib.request

        with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
            return bool(response.status == 200)

    def _api_ready(self, apiserver: Process) -> bool:
        self._check_alive(apiserver)
        assert self.api is not None
        status, _ = self.api.request("GET", "/readyz")
        return status == 200

    @staticmethod
    def _check_alive(process: Process) -> None:
        if not process.alive():
            raise E2EError(f"{process.name} exited ({process.popen.returncode}):\n{process.tail()}")

    def _start_etcd(self) -> Process:
        client = f"http://127.0.0.1:{self.ports.etcd}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return self._start(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=e2e",
                f"--data-dir={self.base / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=e2e={peer}",
                # A throw-away store: durability buys nothing and costs fsync latency on a
                # loaded machine.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> Process:
        pki = self.pki
        return self._start(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={self.base / 'apiserver'}",
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                # Client certificates of the admin, the scheduler, the controller manager
                # and the kubelet are signed by this CA.
                f"--client-ca-file={pki.ca}",
                # The kubelet is authorised as a node (Node authorizer + NodeRestriction),
                # everyone else by RBAC: fatia's ServiceAccount gets exactly daemonset/rbac.yaml.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # As kubeadm and managed clusters run it: privileged containers allowed (the
                # daemonset/components/privileged variant and the chart's privileged=true).
                "--allow-privileged=true",
                # Service-account tokens (TokenRequest, `kubectl create token`).
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
                # Virtual only: nothing routes to it; the `kubernetes` Service takes .1.
                "--service-cluster-ip-range=10.0.0.0/24",
                # The `kubernetes` Service's endpoints would have to be the advertise address,
                # which may not be loopback; nothing here uses that Service.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )

    def _start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> Process:
        """A process of the cluster: run from the scratch directory, for the cluster's life."""
        return self.processes.start(
            name, argv, cwd=self.scratch, lifetime_s=CLUSTER_LIFETIME_S, stdin=stdin, stdout_pipe=stdout_pipe
        )

    def _start_controller_manager(self) -> Process:
        return self._start_control_loop(
            "kube-controller-manager",
            self.ports.controller_manager,
            # Each controller with its own ServiceAccount (tokens by TokenRequest), as in
            # a real cluster, so RBAC's system:controller:* roles apply.
            "--use-service-account-credentials=true",
            # Published in every namespace as ConfigMap kube-root-ca.crt.
            f"--root-ca-file={self.pki.ca}",
        )

    def _start_scheduler(self) -> Process:
        return self._start_control_loop("kube-scheduler", self.ports.scheduler)

    def _start_control_loop(self, name: str, port: int, *flags: str) -> Process:
        """The controller manager or the scheduler: one kubeconfig for the API server and
        for delegated authn/authz, loopback only, a single instance (no leader election)."""
        config = self.base / f"{name.removeprefix('kube-')}.kubeconfig"
        return self._start(
            name,
            [
                str(self.bin / name),
                f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                "--profiling=false",
                *flags,
            ],
        )

    def _start_fakecri(self, holder: Process) -> Process:
        return self._start(
            "fakecri",
            self.in_node(
                [
                    str(self.bin / "fakecri"),
                    "--listen=/run/fakecri.sock",
                    "--record=/var/lib/fakecri/containers.jsonl",
                    "--image-fs-dir=/var/lib/fakecri",
                ]
            ),
        )

    # -- the kubelet --------------------------------------------------------------------

    def kubelet_config(self) -> str:
        """The KubeletConfiguration; each setting says why it is there."""
        return textwrap.dedent(f"""\
            apiVersion: kubelet.config.k8s.io/v1beta1
            kind: KubeletConfiguration
            # Loopback only: the kubelet's API and health endpoint.
            address: 127.0.0.1
            port: {self.ports.kubelet}
            healthzBindAddress: 127.0.0.1
            healthzPort: {self.ports.kubelet_healthz}
            # No unauthenticated read-only port.
            readOnlyPort: 0
            # Nobody may call the kubelet's API: no anonymous access, no token webhook,
            # no client CA, so every request fails authentication.
            authentication:
              anonymous: {{enabled: false}}
              webhook: {{enabled: false}}
            authorization:
              mode: AlwaysAllow
            # The fake CRI (images and sandboxes are pretend; CreateContainer is recorded).
            containerRuntimeEndpoint: unix:///run/fakecri.sock
            imageServiceEndpoint: unix:///run/fakecri.sock
            # The fake CRI answers RuntimeConfig with cgroupfs; they must agree.
            cgroupDriver: cgroupfs
            # No kubepods/QoS cgroup tree on the host; this needs the next setting too,
            # since enforcing node allocatable on pods requires the pods cgroup.
            cgroupsPerQOS: false
            enforceNodeAllocatable: []
            # This machine has cgroup v1; from 1.35 the kubelet refuses it unless told.
            failCgroupV1: false
            # Machines with swap must not stop the kubelet.
            failSwapOn: false
            # No iptables chains in the host's network namespace (the kubelet shares it).
            makeIPTablesUtilChains: false
            # The node's status (capacity and allocatable from the device manager) is
            # computed and, when changed, written this often; the default is 10s. The
            # e2e tests measure fatia, not this period: see bench/e2e_propagation.py.
            nodeStatusUpdateFrequency: {self.node_status_update_frequency}
            nodeStatusReportFrequency: 1m
            # Only the signals below, at thresholds a busy CI disk never reaches: a
            # DiskPressure taint would keep test pods off the node.
            evictionHard:
              memory.available: 1Mi
              nodefs.available: 1%
              imagefs.available: 1%
            # The images are pretend; never garbage-collect them mid-test.
            imageGCHighThresholdPercent: 100
            imageGCLowThresholdPercent: 99
            # Pods get no DNS configuration from the host.
            resolvConf: ""
            # Under /var/log of the node's namespace (a temporary directory).
            podLogsDir: /var/log/pods
            """)

    def start_kubelet(self) -> Process:
        config = self.base / "kubelet-config.yaml"
        config.write_text(self.kubelet_config())
        # Must be empty and never the checkout: with an empty container log path the
        # kubelet's log clean-up removes files matching * in its working directory.
        if any(self.kubelet_cwd.iterdir()):
            raise E2EError(f"the kubelet's working directory {self.kubelet_cwd} is not empty")
        return self._start(
            "kubelet",
            self.in_node(
                [
                    str(self.kubelet_binary),
                    f"--config={config}",
                    f"--kubeconfig={self.base / 'kubelet.kubeconfig'}",
                    # /var/lib/kubelet is where the device-plugin directory is hard-coded; in
                    # the node's namespace it is a temporary directory.
                    "--root-dir=/var/lib/kubelet",
                    "--cert-dir=/var/lib/kubelet/pki",
                    f"--hostname-override={NODE_NAME}",
                    # The Node's address: loopback, so nothing is ever sent to another address.
                    "--node-ip=127.0.0.1",
                    "--v=2",
                ],
                cwd=str(self.kubelet_cwd),
            ),
        )

    def stop_kubelet(self) -> None:
        assert self.kubelet is not None
        self.kubelet.stop()

    def restart_kubelet(self, binary: Path | None = None) -> None:
        """Stop the kubelet and start it again (``binary``: another kubelet version)."""
        self.stop_kubelet()
        self.kubelet_binary = binary or self.kubelet_binary
        self.kubelet = self.start_kubelet()
        self.wait_kubelet_serving(120)

    def wait_kubelet_serving(self, timeout: float) -> float:
        """Until the kubelet's healthz answers; the time (monotonic) it first did."""

        def serving() -> float | None:
            assert self.kubelet is not None
            self._check_alive(self.kubelet)
            return time.monotonic() if self.kubelet_serving() else None

        return wait_for(serving, timeout, "the kubelet to serve", interval=0.05)

    def kubelet_version(self) -> str:
        """What the Node says now: the version of the kubelet that last updated it."""
        return str(self.node()["status"]["nodeInfo"]["kubeletVersion"])

    def kubelet_serving(self) -> bool:
        """The kubelet's healthz answers ok (it serves only once its managers run)."""
        return http_ok(f"http://127.0.0.1:{self.ports.kubelet_healthz}/healthz")

    def kubelet_tail(self, lines: int) -> str:
        """The kubelet's log, less the line it repeats on every status update because
        --node-ip is loopback."""
        if self.kubelet is None:
            return ""
        kept = [line for line in self.kubelet.output().splitlines() if "nodeIP can't be loopback" not in line]
        return "\n".join(kept[-lines:])

    def kubelet_socket(self) -> Path:
        return self.on_host("/var/lib/kubelet/device-plugins/kubelet.sock")

    # -- reading the cluster ----------------------------------------------------------

    def node(self) -> dict[str, Any]:
        assert self.api is not None
        node: dict[str, Any] = self.api.get(f"/api/v1/nodes/{NODE_NAME}")
        return node

    def allocatable(self) -> dict[str, str]:
        return dict(self.node()["status"].get("allocatable", {}))

    def capacity(self) -> dict[str, str]:
        return dict(self.node()["status"].get("capacity", {}))

    def node_ready(self) -> bool:
        node = self.api.get_or_none(f"/api/v1/nodes/{NODE_NAME}") if self.api else None
        if not node:
            return False
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
        )
        tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
        return ready and not tainted

    def wait_node_ready(self, timeout: float) -> None:
        def ready() -> bool:
            assert self.kubelet is not None
            self._check_alive(self.kubelet)
            return self.node_ready()

        wait_for(ready, timeout, f"Node {NODE_NAME} Ready and untainted")

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        assert self.api is not None
        pod: dict[str, Any] | None = self.api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod

    def events(self, namespace: str = "default") -> list[dict[str, Any]]:
        assert self.api is not None
        items: list[dict[str, Any]] = self.api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return items

    def node_events(self) -> list[dict[str, Any]]:
        """``kubectl get events`` about the Node, as a user would list them."""
        done = self.kubectl(
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            f"involvedObject.kind=Node,involvedObject.name={NODE_NAME}",
            "-o",
            "json",
        )
        items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
        return items

    def fatia_events(self, reason: str | None = None) -> list[dict[str, Any]]:
        """The Node's Events recorded by fatia (optionally of one reason), oldest first."""
        return [
            e
            for e in self.node_events()
            if e.get("source", {}).get("component") == "fatia" and (reason is None or e["reason"] == reason)
        ]

    def records(self) -> list[dict[str, Any]]:
        """Every CreateContainer the fake CRI received, oldest first."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def record_of(self, pod: str, container: str | None = None) -> dict[str, Any] | None:
        found = [
            r
            for r in self.records()
            if r["pod"] == pod and (container is None or r["container"] == container)
        ]
        return found[-1] if found else None

    def device_checkpoint(self) -> dict[str, Any]:
        """The kubelet's device-manager checkpoint (its own record of what it assigned).

        Internal to the kubelet, read here only to cross-check a container's devices:
        ``RegisteredDevices`` (resource -> IDs) and ``PodDeviceEntries``.
        """
        path = self.on_host("/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint")
        data: dict[str, Any] = json.loads(path.read_text())["Data"]
        return data

    def assigned_devices(self, pod_uid: str, container: str) -> dict[str, list[str]]:
        """Resource -> device IDs the kubelet assigned to one container."""
        found: dict[str, list[str]] = {}
        for entry in self.device_checkpoint().get("PodDeviceEntries") or []:
            if entry["PodUID"] == pod_uid and entry["ContainerName"] == container:
                ids = [i for per_numa in entry["DeviceIDs"].values() for i in per_numa]
                found.setdefault(entry["ResourceName"], []).extend(ids)
        return found

    # -- kubectl ------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(KUBECTL), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        done = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
        )
        if check and done.returncode != 0:
            raise E2EError(
                f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    def server_dry_run(self, manifests: str) -> subprocess.CompletedProcess[str]:
        """``kubectl apply --server-side --dry-run=server`` of ``manifests``, as fatia's e2e manager."""
        return self.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "--field-manager=fatia-e2e",
            "-f",
            "-",
            input=manifests,
        )

    # -- fatia --------------------------------------------------------------------------

    def deploy_fatia(self) -> None:
        """``kubectl apply -k daemonset/`` server-side; a kubeconfig with fatia's token.

        The token comes from the TokenRequest API (``kubectl create token``) for the
        ``fatia`` ServiceAccount, bound to the Node as a DaemonSet pod's projected
        token names its node.
        """
        self.kubectl("apply", "--server-side", "--field-manager=fatia-e2e", "-k", str(REPO / "daemonset"))
        token = self.kubectl(
            "-n",
            NAMESPACE,
            "create",
            "token",
            "fatia",
            "--bound-object-kind=Node",
            f"--bound-object-name={NODE_NAME}",
            "--duration=2h",
        ).stdout.strip()
        kubeconfig(
            self.fatia_kubeconfig,
            server=self.server,
            ca=self.pki.ca,
            user={"token": token},
            namespace=NAMESPACE,
        )

    def start_fatia(
        self, state_dir: str, *, metrics_port: int | None = None, extra: Sequence[str] = ()
    ) -> Process:
        """``fatia run`` in the node's namespace, in API mode with fatia's own token.

        The paths are the DaemonSet's: fatia finds the kubelet at its defaults.
        ``state_dir`` is a path in the node's namespace (under /var/lib).
        """
        argv = [
            str(FATIA),
            "run",
            f"--node-name={NODE_NAME}",
            "--device-plugin-dir=/var/lib/kubelet/device-plugins",
            "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
            f"--nvml={NVML_SPEC}",
            f"--state-dir={state_dir}",
            f"--kubeconfig={self.fatia_kubeconfig}",
            f"--namespace={NAMESPACE}",
            "--log-format=json",
        ]
        if metrics_port is not None:
            argv.append(f"--metrics-addr=127.0.0.1:{metrics_port}")
        env = fatia_env()
        return self.processes.start(
            "fatia",
            self.in_node([*argv, *extra], cwd="/"),
            cwd=self.scratch,
            lifetime_s=FATIA_LIFETIME_S,
            env=env,
        )

    def fatia_status(self, state_dir: str) -> dict[str, Any] | None:
        path = self.on_host(state_dir)
        done = subprocess.run(
            [str(FATIA), "status", f"--state-dir={path}", "--output=json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=fatia_env(),
        )
        if not done.stdout.strip():
            return None
        status: dict[str, Any] = json.loads(done.stdout)
        return status

    def fatia_sim(self, state_dir: str, *args: str) -> str:
        done = _run([str(FATIA), "sim", f"--state-dir={self.on_host(state_dir)}", *args], env=fatia_env())
        return done.stdout.decode()

    # -- teardown -----------------------------------------------------------------------

    def teardown(self) -> None:
        if self.api is not None:
            self.api.close()
        for process in reversed(self.processes.started):
            process.stop()
        if self.holder is not None and self.holder.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.holder.popen.stdin.close()
        self.processes.stop_all()

    def leftovers(self, grace: float = 10) -> list[str]:
        """Processes still there that were started from this cluster's directory.

        Waits up to ``grace`` seconds for processes that are on their way out (killed,
        not yet reaped) before it names what is left.
        """
        deadline = time.monotonic() + grace
        while True:
            found = self._ours()
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def _ours(self) -> list[str]:
        mine = str(self.base)
        # Each started process led its own session: anything still in one is ours.
        sessions = {p.pid for p in self.processes.started}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                # After the command name, which is in parentheses: the state is the
                # first field and the session id the fourth.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                state, session = fields[0], int(fields[3])
            except (OSError, ValueError, IndexError):
                continue
            if mine in cmdline or session in sessions:
                found.append(f"{entry.name} ({state}): {cmdline[:200]}")
        return found

    def host_changes(self) -> list[str]:
        """What the node side changed on the host: the kubelet's sysctls, cgroups."""
        changes = []
        now = host_sysctls()
        for name, before in self.sysctls_before.items():
            if now[name] != before:
                changes.append(f"/proc/sys/{name}: {before.strip()} -> {now[name].strip()}")
        new_cgroups = host_cgroups() - self.cgroups_before
        changes += [f"new cgroup {path}" for path in sorted(new_cgroups)]
        return changes

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


class Node:
    """The test's view of the one node: fatia processes, its ConfigMap, its pods."""

    def __init__(self, cluster: Cluster, test_name: str) -> None:
        self.cluster = cluster
        digest = hashlib.sha1(test_name.encode()).hexdigest()[:8]
        # In the node's namespace: the DaemonSet's /var/lib/fatia, one per test.
        self.state_dir = f"/var/lib/fatia-{digest}"
        self.fatias: list[Process] = []
        self.pods: list[str] = []

    def start_fatia(self, *, state_dir: str | None = None) -> Process:
        process = self.cluster.start_fatia(state_dir or self.state_dir, metrics_port=free_port())
        self.fatias.append(process)
        index = len(self.fatias)
        FAILURE_LOGS[f"fatia #{index}"] = lambda: process.tail(40)
        return process

    def metrics_port(self, process: Process) -> int:
        flag = next(a for a in process.argv if a.startswith("--metrics-addr="))
        return int(flag.rsplit(":", 1)[1])

    def apply_config(self, config: str, name: str | None = None) -> None:
        """``kubectl apply`` the per-node ConfigMap ``fatia-<node>`` with ``config``."""
        cm = name or f"fatia-{NODE_NAME}"
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": cm, "namespace": NAMESPACE},
            "data": {"config.yaml": config},
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def status(self) -> dict[str, Any] | None:
        return self.cluster.fatia_status(self.state_dir)

    def annotation(self) -> dict[str, Any] | None:
        value = self.cluster.node()["metadata"].get("annotations", {}).get(STATUS_ANNOTATION)
        return json.loads(value) if value else None

    def wait_allocatable(
        self, expected: dict[str, int], timeout: float = 60, what: str = ""
    ) -> dict[str, str]:
        """Until every resource in ``expected`` shows that allocatable count."""

        def matches() -> dict[str, str] | None:
            for process in self.fatias[-1:]:
                if not process.alive():
                    raise E2EError(f"fatia exited:\n{process.tail()}")
            allocatable = self.cluster.allocatable()
            ok = all(int(allocatable.get(k, "0")) == v for k, v in expected.items())
            return allocatable if ok else None

        try:
            return wait_for(matches, timeout, what or f"allocatable {expected}")
        except E2EError as exc:
            raise E2EError(f"{exc}; allocatable now {self.gpu_allocatable()}") from None

    def wait_no_devices(self, timeout: float = 60) -> None:
        """Until the Node shows no allocatable nvidia.com/ device: no fatia serves any.

        Between tests, so that no test mistakes what an earlier fatia advertised (the
        kubelet keeps it in the Node's status until it notices the plugin is gone).
        """
        wait_for(
            lambda: not any(self.gpu_allocatable().values()),
            timeout,
            "no allocatable nvidia.com/ devices on the Node",
        )

    def gpu_allocatable(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.cluster.allocatable().items() if k.startswith("nvidia.com/")}

    def wait_phase(self, phase: str, timeout: float = 60) -> dict[str, Any]:
        """Until the Node's status annotation says ``phase``; the annotation."""

        def reached() -> dict[str, Any] | None:
            annotation = self.annotation()
            return annotation if annotation and annotation["phase"] == phase else None

        try:
            return wait_for(reached, timeout, f"fatia phase {phase!r}", interval=0.2)
        except E2EError as exc:
            raise E2EError(f"{exc}; annotation now {self.annotation()}") from None

    def clear_node_report(self) -> None:
        """Remove what an earlier fatia wrote on the Node (labels, annotation)."""
        labels = self.cluster.node()["metadata"].get("labels", {})
        body = {
            "metadata": {
                "labels": {k: None for k in labels if k.startswith("fatia.dev/")},
                "annotations": {STATUS_ANNOTATION: None},
            }
        }
        assert self.cluster.api is not None
        status, answer = self.cluster.api.request(
            "PATCH", f"/api/v1/nodes/{NODE_NAME}", body, "application/merge-patch+json"
        )
        if status != 200:
            raise E2EError(f"cannot clear fatia's labels from the Node: {status} {answer}")

    def create_pod(self, name: str, limits: dict[str, int], *, containers: int = 1) -> None:
        spec = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"fatia-e2e": "1"}},
            "spec": {
                # No token volume to mount: nothing here talks to the API.
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": f"c{i}",
                        "image": "registry.invalid/fatia-e2e/pause:1",
                        "resources": {"limits": {k: str(v) for k, v in limits.items()}},
                    }
                    for i in range(containers)
                ],
            },
        }
        self.pods.append(name)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(spec))

    def partition_a100(self, config: str, counts: dict[str, int]) -> None:
        """Apply an A100 MIG config: fatia waits for a GPU reset, the operator resets
        GPU 0 (``fatia sim reset``, as ``nvidia-smi -r`` would), fatia finishes."""
        before = (self.annotation() or {}).get("desired")
        self.apply_config(config)

        def taken() -> dict[str, Any] | None:
            annotation = self.annotation()
            if (
                annotation
                and annotation.get("desired") not in (None, before)
                and annotation["phase"] in ("waiting", "idle")
            ):
                return annotation
            return None

        if wait_for(taken, 60, "fatia to take the A100 config")["phase"] == "waiting":
            self.cluster.fatia_sim(self.state_dir, "reset", "--gpu", "0")
        self.wait_allocatable(counts, 60)

    def wait_pod_running(self, name: str, timeout: float = 90) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            pod = self.cluster.pod(name)
            if pod is None:
                return None
            if pod["status"].get("phase") in ("Failed", "Succeeded"):
                raise E2EError(f"pod {name} ended: {pod['status']}")
            return pod if pod["status"].get("phase") == "Running" else None

        try:
            return wait_for(running, timeout, f"pod {name} Running", interval=0.2)
        except E2EError as exc:
            pod = self.cluster.pod(name)
            raise E2EError(f"{exc}; status {pod and pod['status']}") from None

    def delete_pod(self, name: str, timeout: float = 60) -> None:
        self.cluster.kubectl("delete", "pod", name, "--wait=false", "--ignore-not-found")
        self.wait_pod_gone(name, timeout)

    def wait_pod_gone(self, name: str, timeout: float = 60) -> None:
        wait_for(lambda: self.cluster.pod(name) is None, timeout, f"pod {name} to be gone")

    def cleanup(self) -> None:
        """Stop the test's fatia, delete its pods and ConfigMaps, clear the Node."""
        for name in self.pods:
            self.cluster.kubectl("delete", "pod", name, "--ignore-not-found", "--wait=false", check=False)
        for process in self.fatias:
            process.stop()
        self.wait_no_devices()
        self.cluster.kubectl(
            "-n",
            NAMESPACE,
            "delete",
            "configmap",
            f"fatia-{NODE_NAME}",
            "fatia-default",
            "--ignore-not-found",
            check=False,
        )
        for name in self.pods:
            self.wait_pod_gone(name)
        self.clear_node_report()
        for key in [k for k in FAILURE_LOGS if k.startswith("fatia")]:
            del FAILURE_LOGS[key]


@contextlib.contextmanager
def booted(bin_dir: Path, *, node_status_update_frequency: str = "1s") -> Iterator[Cluster]:
    """A booted cluster with fatia's base deployed; torn down, checked and removed after."""
    cluster = Cluster(bin_dir)
    cluster.node_status_update_frequency = node_status_update_frequency
    try:
        cluster.boot()
        cluster.deploy_fatia()
        yield cluster
    finally:
        cluster.teardown()
    left, changed = cluster.leftovers(), cluster.host_changes()
    if left or changed:
        raise E2EError(f"processes left behind: {left}; host changes: {changed}")
    cluster.remove()
