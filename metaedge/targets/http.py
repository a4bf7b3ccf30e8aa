"""Reaching a running runtime bundle over HTTP: one keep-alive connection to
``python -m metaedge.deploy.runtime serve`` (a container or a device), its ``/healthz``,
``/metrics`` and ``/infer`` endpoints, and errors that say what to start or check. Timing it is
measurement, in :mod:`metaedge.deploy.measure.http`. Torch-free."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from metaedge.errors import MetaedgeError

__all__ = ["HttpRuntimeClient"]


class HttpRuntimeClient:
    """One keep-alive connection to a runtime server."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise MetaedgeError(f"bad runtime URL {url!r}", "use http://HOST:PORT of `metaedge.deploy.runtime serve`")
        self.url = f"http://{parts.hostname}:{parts.port or 80}"
        self._host, self._port, self._timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
        for attempt in (0, 1):  # the server closes the connection after an error; reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                headers = {"Content-Type": ctype} if ctype else {}
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, json.loads(data or b"{}")
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt:
                    raise MetaedgeError(f"cannot reach the runtime at {self.url} ({exc})", "start the bundle (docker run ... ) or check --url") from exc
        raise AssertionError("unreachable")

    def health(self) -> dict:
        status, body = self._request("GET", "/healthz")
        if status != 200:
            raise MetaedgeError(f"{self.url}/healthz answered {status}: {body}", "check the container logs")
        return body

    def metrics(self) -> dict:
        return self._request("GET", "/metrics")[1]

    def infer_npy(self, payload: bytes) -> dict:
        status, body = self._request("POST", "/infer", payload, "application/x-npy")
        if status != 200:
            raise MetaedgeError(f"{self.url}/infer answered {status}: {body.get('error', body)}", "check the input shape against the model's manifest")
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
