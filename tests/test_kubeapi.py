"""fatia's Kubernetes API client (deviceplugin.cluster.kubeapi, .credentials) against real
servers: the fake API server over HTTP, and a TLS server of this module's own, with a
throw-away CA made by openssl, that answers with what it was sent (the Authorization header,
the client certificate's CN).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3

from deviceplugin.cluster.credentials import TOKEN_REREAD_S, _TokenFile, from_kubeconfig, in_cluster
from deviceplugin.cluster.kubeapi import KubeApi, path
from deviceplugin.testing.apiserver import FakeKube
from mig.errors import ApiError, CredentialsError

SERVER_NAME = "api.fatia.test"  # the only name in the server's certificate

# -- a throw-away PKI and a TLS server that tells what it saw ------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(folder: Path, name: str, subject: str, extensions: list[str], ca: str | None) -> None:
    argv = [
        "openssl",
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ]
    argv += ["-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt"), "-subj", subject]
    argv += ["-days", "2", "-config", str(folder / "openssl.cnf")]
    if ca:
        argv += ["-CA", str(folder / f"{ca}.crt"), "-CAkey", str(folder / f"{ca}.key")]
    for extension in extensions:
        argv += ["-addext", extension]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    (folder / "openssl.cnf").write_text("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n")
    ca = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,digitalSignature"]
    leaf = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
    _openssl(folder, "ca", "/CN=fatia-test-ca", ca, None)
    _openssl(folder, "other", "/CN=fatia-other-ca", ca, None)
    server = [*leaf, "extendedKeyUsage=serverAuth", f"subjectAltName=DNS:{SERVER_NAME}"]
    _openssl(folder, "server", "/CN=apiserver", server, "ca")
    _openssl(folder, "client", "/O=fatia/CN=system:node:node-a", [*leaf, "extendedKeyUsage=clientAuth"], "ca")
    return Pki(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "other.crt",
    )


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the Authorization header and the client certificate's CN."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        peer: Any = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)
        body = json.dumps({"auth": self.headers.get("Authorization"), "cn": cn, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_OPTIONAL  # a client certificate is asked for, not required
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "here",
        "clusters": [{"name": "c", "cluster": cluster}],
        "contexts": [
            {"name": "here", "context": {"cluster": "c", **({"user": "u"} if user is not None else {})}}
        ],
        "users": [{"name": "u", "user": user or {}}],
    }
    target = tmp_path / "kubeconfig"
    target.write_text(json.dumps(config))
    return target


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# -- kubeconfig ---------------------------------------------------------------------------


def test_a_client_certificate_given_inline_authenticates_over_verified_tls(
    tmp_path: Path, pki: Pki, tls_server: str
) -> None:
    cluster = {
        "server": tls_server,
        "certificate-authority-data": b64(pki.ca),
        "tls-server-name": SERVER_NAME,
    }
    user = {"client-certificate-data": b64(pki.client_cert), "client-key-data": b64(pki.client_key)}

    seen = from_kubeconfig(kubeconfig(tmp_path, cluster, user)).get("/api/v1/nodes/a", params={"x": True})

    assert seen == {"auth": None, "cn": "system:node:node-a", "path": "/api/v1/nodes/a?x=true"}


def test_files_are_found_relative_to_the_kubeconfig_and_a_token_is_a_bearer_token(
    tmp_path: Path, pki: Pki, tls_server: str
) -> None:
    (tmp_path / "ca.crt").write_bytes(pki.ca.read_bytes())
    cluster = {"server": tls_server, "certificate-authority": "ca.crt", "tls-server-name": SERVER_NAME}

    seen = from_kubeconfig(kubeconfig(tmp_path, cluster, {"token": "t0ken"})).get("/version")

    assert seen["auth"] == "Bearer t0ken" and seen["cn"] is None


def test_the_server_certificate_is_verified(tmp_path: Path, pki: Pki, tls_server: str) -> None:
    other_ca = {
        "server": tls_server,
        "certificate-authority": str(pki.other_ca),
        "tls-server-name": SERVER_NAME,
    }
    wrong_name = {"server": tls_server, "certificate-authority": str(pki.ca)}  # 127.0.0.1 is not in it

    for cluster in (other_ca, wrong_name):
        with pytest.raises(urllib3.exceptions.SSLError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            from_kubeconfig(kubeconfig(tmp_path, cluster, {"token": "t"})).get("/version")
    insecure = {"server": tls_server, "insecure-skip-tls-verify": True}
    assert (
        from_kubeconfig(kubeconfig(tmp_path, insecure, {"token": "t"})).get("/version")["auth"] == "Bearer t"
    )


def test_an_exec_plugin_token_is_kept_until_it_is_about_to_expire(
    tmp_path: Path, pki: Pki, tls_server: str
) -> None:
    calls = tmp_path / "calls"
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(
        "#!/bin/sh\n"
        f'echo x >> {calls}\nn=$(wc -l < {calls})\ntest -n "$KUBERNETES_EXEC_INFO" || exit 3\n'
        'printf \'{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",'
        '"status":{"token":"exec-%s-%s","expirationTimestamp":"%s"}}\' "$PREFIX" "$n" "$EXPIRES"\n'
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    cluster = {"server": tls_server, "certificate-authority": str(pki.ca), "tls-server-name": SERVER_NAME}

    def user(expires: str) -> dict[str, Any]:
        env = [{"name": "PREFIX", "value": "p"}, {"name": "EXPIRES", "value": expires}]
        return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin), "env": env}}

    lasting = from_kubeconfig(kubeconfig(tmp_path, cluster, user("2999-01-01T00:00:00Z")))
    assert [lasting.get("/version")["auth"] for _ in range(3)] == ["Bearer exec-p-1"] * 3

    expiring = from_kubeconfig(kubeconfig(tmp_path, cluster, user("2000-01-01T00:00:00Z")))
    assert [expiring.get("/version")["auth"] for _ in range(2)] == ["Bearer exec-p-2", "Bearer exec-p-3"]


def test_a_token_file_is_read_again_after_a_minute(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    now = [1000.0]
    read = _TokenFile(token, clock=lambda: now[0])

    assert read() == "first"
    token.write_text("second")
    now[0] += TOKEN_REREAD_S - 1
    assert read() == "first"
    now[0] += 1
    assert read() == "second"
    token.unlink()  # a rotation in progress: the last token is kept
    now[0] += TOKEN_REREAD_S
    assert read() == "second"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("current-context"), "no current-context"),
        (lambda c: c.update({"current-context": "elsewhere"}), "no context named 'elsewhere'"),
        (lambda c: c["clusters"][0]["cluster"].pop("server"), "cluster 'c' has no http(s) server"),
        (
            lambda c: c["clusters"][0]["cluster"].update({"proxy-url": "http://p:3128"}),
            "proxy-url is not supported",
        ),
        (
            lambda c: c["users"][0]["user"].update({"auth-provider": {"name": "gcp"}}),
            "auth-provider is not supported",
        ),
        (lambda c: c["users"][0]["user"].update({"client-key-data": "%%%"}), "client-key-data is not base64"),
        (lambda c: c["users"][0].update({"name": "v"}), "no user named 'u'"),
        (lambda c: c["users"][0].update({"user": {"exec": {"args": ["x"]}}}), "exec has no command"),
    ],
)
def test_a_kubeconfig_fatia_cannot_use_is_refused_with_what_and_where(
    tmp_path: Path, edit: Any, message: str
) -> None:
    path = kubeconfig(
        tmp_path, {"server": "https://127.0.0.1:6443"}, {"client-certificate-data": "", "token": "t"}
    )
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))

    with pytest.raises(CredentialsError, match=re.escape(message)) as refused:
        from_kubeconfig(path)
    assert str(path) in str(refused.value)


def test_an_unreadable_kubeconfig_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"kubeconfig .*missing: cannot be read"):
        from_kubeconfig(tmp_path / "missing")


# -- in a pod ------------------------------------------------------------------------------


def test_in_a_pod_the_service_account_and_the_service_address_are_used(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_bytes(pki.ca.read_bytes())

    api = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)

    assert api.server == "https://[fd00::1]:443"
    with pytest.raises(CredentialsError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster({}, tmp_path)
    (tmp_path / "token").unlink()
    with pytest.raises(CredentialsError, match="token is missing"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)


# -- requests and watches against the fake API server ---------------------------------------------


def test_a_refusal_is_an_api_error_with_the_servers_status(fake_kube: FakeKube) -> None:
    api = fake_kube.api()

    with pytest.raises(ApiError) as refused:
        api.get(path("api", "v1", "nodes", "absent"))

    assert (refused.value.status, refused.value.reason) == (404, "NotFound")
    assert "absent" in refused.value.message


def test_a_watch_delivers_events_and_a_too_old_version_is_a_410(fake_kube: FakeKube) -> None:
    api = fake_kube.api()
    configmaps = path("api", "v1", "namespaces", "default", "configmaps")
    version = api.get(configmaps)["metadata"]["resourceVersion"]
    api.create(configmaps, {"metadata": {"name": "one"}, "data": {"k": "v"}})

    watch = api.watch(configmaps, params={"resourceVersion": version, "timeoutSeconds": 5}, timeout=10)
    kind, obj = next(iter(watch))
    watch.stop()
    assert (kind, obj["metadata"]["name"], obj["data"]) == ("ADDED", "one", {"k": "v"})

    fake_kube.expire_history()
    with pytest.raises(ApiError) as expired:
        list(api.watch(configmaps, params={"resourceVersion": version}, timeout=10))
    assert (expired.value.status, expired.value.reason) == (410, "Expired")


def test_stop_ends_a_watch_that_waits_for_events(fake_kube: FakeKube) -> None:
    api = KubeApi(fake_kube.url)
    watch = api.watch(path("api", "v1", "namespaces", "default", "configmaps"), params={}, timeout=60)
    ended = threading.Event()

    def follow() -> None:
        for _ in watch:
            pass
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.2)  # the reader is blocked in its read
    watch.stop()

    assert ended.wait(2)
    # The cut connection went back to the pool closed: the next requests open a fresh one.
    for _ in range(3):
        assert api.get(path("api", "v1", "namespaces", "default", "configmaps"))["items"] == []
