"""Where the API server is and how to authenticate to it: a kubeconfig, or the pod's
service account.

What is read, as kubectl and client-go read it:

- a kubeconfig's current context: its cluster's ``server``, ``certificate-authority``
  (a path, relative to the kubeconfig's folder) or ``certificate-authority-data``,
  ``insecure-skip-tls-verify`` and ``tls-server-name``; its user's ``token``,
  ``tokenFile``, ``client-certificate``/``client-key`` (paths or ``-data``),
  ``username``/``password``, or an ``exec`` credential plugin
  (``client.authentication.k8s.io``, whose token is kept until it expires);
- in a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT``, and the service account's token and CA
  under ``/var/run/secrets/kubernetes.io/serviceaccount``.

Token files are read again each minute, since bound service-account tokens rotate. What
fatia cannot use (``auth-provider``, ``proxy-url``, an exec plugin that gives client
certificates) is a :class:`~mig.errors.CredentialsError` that names it, not a silent
anonymous client.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
import urllib3
import yaml

from deviceplugin.cluster.kubeapi import KubeApi
from mig.errors import CredentialsError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_S = 60.0
EXEC_TIMEOUT_S = 30.0
EXEC_EARLY_S = 10.0  # an exec token is fetched again this long before it expires

log = structlog.get_logger("fatia.kube")

Headers = Callable[[], Mapping[str, str]]


def api(kubeconfig: str | None) -> KubeApi:
    """A client from ``--kubeconfig``, or from the pod's service account."""
    return from_kubeconfig(Path(kubeconfig)) if kubeconfig else in_cluster()


def in_cluster(environ: Mapping[str, str] = os.environ, account: Path = SERVICE_ACCOUNT) -> KubeApi:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise CredentialsError(
            "not in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset (give --kubeconfig)"
        )
    token, ca = account / "token", account / "ca.crt"
    for needed in (token, ca):
        if not needed.is_file():
            raise CredentialsError(f"service account: {needed} is missing (is a token mounted?)")
    host = f"[{host}]" if ":" in host else host
    return KubeApi(
        f"https://{host}:{port}",
        tls=ssl.create_default_context(cafile=str(ca)),
        headers=_bearer(_TokenFile(token)),
    )


def from_kubeconfig(path: Path) -> KubeApi:
    where = f"kubeconfig {path}"
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CredentialsError(f"{where}: cannot be read: {exc}") from exc
    config = _mapping(loaded, where)
    name = config.get("current-context")
    if not name:
        raise CredentialsError(f"{where}: no current-context")
    context = _mapping(_named(config, "contexts", name, where), f"{where}: context {name!r}")
    cluster_name = context.get("cluster")
    cluster = _mapping(_named(config, "clusters", cluster_name, where), f"{where}: cluster {cluster_name!r}")
    user: Mapping[str, Any] = {}
    if context.get("user"):
        user = _mapping(_named(config, "users", context["user"], where), f"{where}: user {context['user']!r}")
    base = path.parent
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise CredentialsError(f"{where}: cluster {cluster_name!r} has no http(s) server")
    if cluster.get("proxy-url"):
        raise CredentialsError(f"{where}: cluster {cluster_name!r}: proxy-url is not supported")
    if user.get("auth-provider"):
        raise CredentialsError(
            f"{where}: user {context.get('user')!r}: auth-provider is not supported (use a token, "
            "a client certificate or an exec plugin)"
        )
    tls = _tls(cluster, user, base, where) if server.startswith("https://") else None
    return KubeApi(
        server, tls=tls, server_name=cluster.get("tls-server-name"), headers=_headers(user, base, where)
    )


# -- kubeconfig parts --------------------------------------------------------------------


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CredentialsError(f"{where}: not a mapping")
    return value


def _named(config: Mapping[str, Any], section: str, name: object, where: str) -> object:
    for entry in config.get(section) or []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            return entry.get(section[:-1])
    raise CredentialsError(f"{where}: no {section[:-1]} named {name!r}")


def _pem(entry: Mapping[str, Any], key: str, base: Path, where: str) -> tuple[str | None, bytes | None]:
    """``key`` as a path (relative to the kubeconfig), or ``key-data`` as PEM bytes."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            return None, base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError) as exc:
            raise CredentialsError(f"{where}: {key}-data is not base64") from exc
    file = entry.get(key)
    return (str(base / file) if file else None), None


def _tls(cluster: Mapping[str, Any], user: Mapping[str, Any], base: Path, where: str) -> ssl.SSLContext:
    ca_file, ca_data = _pem(cluster, "certificate-authority", base, where)
    try:
        context = ssl.create_default_context(
            cafile=ca_file, cadata=ca_data.decode() if ca_data is not None else None
        )
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            # Said once here, not by urllib3 on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("tls_verification_off", source=where, reason="insecure-skip-tls-verify")
        cert_file, cert_data = _pem(user, "client-certificate", base, where)
        key_file, key_data = _pem(user, "client-key", base, where)
        if cert_file or cert_data:
            _load_client_certificate(context, cert_file, cert_data, key_file, key_data)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CredentialsError(f"{where}: TLS: {exc}") from exc
    return context


def _load_client_certificate(
    context: ssl.SSLContext,
    cert_file: str | None,
    cert_data: bytes | None,
    key_file: str | None,
    key_data: bytes | None,
) -> None:
    """``ssl`` loads certificates from files only: inline data goes through a private
    temporary folder, removed once loaded."""
    with tempfile.TemporaryDirectory(prefix="fatia-tls-") as folder:
        if cert_data is not None:
            cert_file = str(Path(folder) / "client.crt")
            Path(cert_file).write_bytes(cert_data)
        if key_data is not None:
            key_file = str(Path(folder) / "client.key")
            Path(key_file).write_bytes(key_data)
        assert cert_file is not None
        context.load_cert_chain(cert_file, key_file)


def _headers(user: Mapping[str, Any], base: Path, where: str) -> Headers:
    if user.get("token"):
        return _bearer(lambda: str(user["token"]))
    if user.get("tokenFile"):
        return _bearer(_TokenFile(base / user["tokenFile"]))
    if user.get("exec"):
        return _bearer(_ExecPlugin(_mapping(user["exec"], f"{where}: exec"), where))
    if user.get("username"):
        basic = base64.b64encode(f"{user['username']}:{user.get('password', '')}".encode()).decode()
        return lambda: {"Authorization": f"Basic {basic}"}
    return dict  # TLS client certificates, or anonymous


def _bearer(token: Callable[[], str]) -> Headers:
    return lambda: {"Authorization": f"Bearer {token()}"}


class _TokenFile:
    """A token file's content, read again after :data:`TOKEN_REREAD_S`."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path, self._clock = path, clock
        self._lock = threading.Lock()
        self._token, self._read_at = "", -TOKEN_REREAD_S

    def __call__(self) -> str:
        with self._lock:
            if self._clock() - self._read_at >= TOKEN_REREAD_S:
                try:
                    self._token = self._path.read_text().strip()
                except OSError as exc:
                    if not self._token:
                        raise CredentialsError(f"token file {self._path}: {exc}") from exc
                self._read_at = self._clock()
            return self._token


class _ExecPlugin:
    """An exec credential plugin's token, kept until shortly before it expires."""

    def __init__(self, spec: Mapping[str, Any], where: str) -> None:
        command = spec.get("command")
        if not command:
            raise CredentialsError(f"{where}: exec has no command")
        self._argv = [str(command), *(str(a) for a in spec.get("args") or [])]
        self._env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        self._api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
        self._where = where
        self._lock = threading.Lock()
        self._token, self._expires = "", 0.0

    def __call__(self) -> str:
        with self._lock:
            if not self._token or time.time() >= self._expires - EXEC_EARLY_S:
                self._token, self._expires = self._run()
            return self._token

    def _run(self) -> tuple[str, float]:
        info = {"apiVersion": self._api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        env = {**os.environ, **self._env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        what = f"{self._where}: exec {self._argv[0]}"
        try:
            done = subprocess.run(
                self._argv, env=env, capture_output=True, timeout=EXEC_TIMEOUT_S, check=True
            )
            status = json.loads(done.stdout)["status"]
        except subprocess.CalledProcessError as exc:
            raise CredentialsError(f"{what}: exit {exc.returncode}: {exc.stderr.decode()[-300:]}") from exc
        except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(f"{what}: {exc}") from exc
        token = status.get("token") if isinstance(status, dict) else None
        if not token:
            raise CredentialsError(f"{what}: gave no token (client certificates from exec are not supported)")
        expires = status.get("expirationTimestamp")
        if not expires:
            return str(token), float("inf")
        return str(token), datetime.fromisoformat(str(expires).replace("Z", "+00:00")).timestamp()
