"""A small Kubernetes API client: JSON over HTTP(S), the few calls fatia makes.

fatia reads one ConfigMap, patches its Node, records Events, and in DRA mode reads
ResourceClaims and writes ResourceSlices: a dozen REST calls on plain JSON. The official
``kubernetes`` package would cost each ``fatia run`` about 2 s of CPU to import (its
generated API classes and pydantic models) and about 50 MiB of memory, on every GPU node,
for calls whose bodies fatia builds and reads as dicts anyway. So this module speaks the
API itself, on ``urllib3``:

- :class:`KubeApi` sends a request and returns the decoded JSON, or raises
  :class:`ApiError` with the server's ``Status`` (its code, reason and message);
- :meth:`KubeApi.watch` opens a watch, whose newline-delimited events are read as they
  come; an ``ERROR`` event (410 Gone: the resourceVersion is too old) is raised as an
  :class:`ApiError`, as a failed request would be; another thread may :meth:`Watch.stop` it;
- :mod:`deviceplugin.cluster.credentials` builds one from a kubeconfig or the pod's
  service account, the way kubectl and client-go read them.

The client never retries: every caller has its own backoff.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from mig.errors import ApiError

Json = dict[str, Any]
Params = Mapping[str, str | int | bool]

TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
_CHUNK = 64 * 1024


def _status_error(status: Json, http_status: int) -> ApiError:
    """From a ``Status`` object (a refused request's body, or a watch's ERROR event)."""
    code = status.get("code")
    return ApiError(
        code if isinstance(code, int) else http_status,
        str(status.get("reason") or "Error"),
        str(status.get("message") or ""),
    )


def _response_error(response: urllib3.BaseHTTPResponse) -> ApiError:
    try:
        body = json.loads(response.data)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return _status_error(body, response.status)
    return ApiError(response.status, response.reason or "Error", response.data[:300].decode(errors="replace"))


def path(*segments: str) -> str:
    """A URL path from segments, each quoted: ``path("api", "v1", "nodes", name)``."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


class KubeApi:
    """The API server at ``server``; thread-safe (one connection pool for every thread).

    ``headers`` is called per request for the credentials (a bearer token that is re-read
    as it rotates, or nothing when TLS client certificates authenticate).
    """

    def __init__(
        self,
        server: str,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        headers: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = headers
        # Connections kept: a watch holds one; the reporter, the publisher and the claim
        # reads of concurrent prepares share the rest.
        options: dict[str, Any] = {"maxsize": 8, "retries": False}
        if self.server.startswith("https:"):
            options["ssl_context"] = tls or ssl.create_default_context()
            if server_name:
                options["server_hostname"] = server_name
        self._pool = urllib3.PoolManager(**options)

    # -- requests ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url_path: str,
        *,
        params: Params | None = None,
        body: Json | None = None,
        content_type: str = JSON,
        timeout: float = TIMEOUT_S,
    ) -> Json:
        """The decoded answer of one request; :class:`ApiError` if the server refused it."""
        response = self._send(method, url_path, params, body, content_type, timeout, stream=False)
        if response.status >= 400:
            raise _response_error(response)
        if not response.data:
            return {}
        answer = json.loads(response.data)
        if not isinstance(answer, dict):
            raise ApiError(response.status, "BadResponse", f"{method} {url_path}: not a JSON object")
        return answer

    def get(self, url_path: str, *, params: Params | None = None, timeout: float = TIMEOUT_S) -> Json:
        return self.request("GET", url_path, params=params, timeout=timeout)

    def create(self, url_path: str, body: Json) -> Json:
        return self.request("POST", url_path, body=body)

    def replace(self, url_path: str, body: Json) -> Json:
        return self.request("PUT", url_path, body=body)

    def patch(self, url_path: str, body: Json, *, content_type: str = MERGE_PATCH) -> Json:
        return self.request("PATCH", url_path, body=body, content_type=content_type)

    def delete(self, url_path: str) -> Json:
        return self.request("DELETE", url_path)

    def watch(self, url_path: str, *, params: Params, timeout: float) -> Watch:
        """A watch of a collection (``watch=true`` is added); ``timeout`` bounds each read."""
        response = self._send("GET", url_path, {**params, "watch": "true"}, None, JSON, timeout, stream=True)
        if response.status >= 400:
            response.read()
            error = _response_error(response)
            response.release_conn()
            raise error
        return Watch(response)

    def _send(
        self,
        method: str,
        url_path: str,
        params: Params | None,
        body: Json | None,
        content_type: str,
        timeout: float,
        *,
        stream: bool,
    ) -> urllib3.BaseHTTPResponse:
        url = self.server + url_path
        if params:
            url += "?" + urlencode({k: _query_value(v) for k, v in params.items()})
        headers = {"Accept": JSON, **self._headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        return self._pool.request(
            method,
            url,
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout),
            preload_content=not stream,
        )


def _query_value(value: str | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class Watch:
    """The events of one watch, as ``(type, object)``, until the server ends it.

    Iterated by one thread; :meth:`stop`, from any thread, ends the iteration (a read in
    progress is cut short).
    """

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[tuple[str, Json]]:
        pending = b""
        ended = False  # by the server, the whole response read: the connection can be reused
        try:
            for chunk in self._response.stream(_CHUNK):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if self._stopped.is_set():
                        return
                    if line.strip():
                        yield _event(line)
            if pending.strip() and not self._stopped.is_set():
                yield _event(pending)
            ended = True
        except Exception:
            if not self._stopped.is_set():
                raise
        finally:
            if not ended:  # stopped, failed or abandoned midway: the rest is not to be read
                self._response.close()
            self._response.release_conn()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(RuntimeError, ValueError):  # the watch has already ended
            self._response.shutdown()


def _event(line: bytes) -> tuple[str, Json]:
    event = json.loads(line)
    kind, obj = event.get("type"), event.get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise ApiError(500, "BadWatchEvent", line[:300].decode(errors="replace"))
    if kind == "ERROR":
        raise _status_error(obj, 500)
    return kind, obj
