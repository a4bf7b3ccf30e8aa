"""Just enough HTTP/1.1 over asyncio streams: read one request head within a deadline, read a body
of a known length, and format responses. Keep-alive, ``Expect: 100-continue`` and Content-Length
bodies only (chunked uploads are refused with 411).

Limits are enforced while reading, so a client can never make the server buffer more than
``MAX_HEAD_BYTES`` of headers; the caller bounds the time each phase may take.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["MAX_HEAD_BYTES", "HttpError", "Request", "json_response", "read_body", "read_head", "read_request_line", "response"]

MAX_HEAD_BYTES = 32 << 10  # request line + headers
MAX_HEADERS = 100
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")


class HttpError(Exception):
    """A request the server answers with ``status`` and then closes the connection."""

    def __init__(self, status: int, message: str, headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: Dict[str, str]  # lower-case names

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def expects_continue(self) -> bool:
        return self.version == "HTTP/1.1" and self.headers.get("expect", "").lower() == "100-continue"

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "application/json").split(";", 1)[0].strip().lower()

    def content_length(self, required: bool) -> int:
        if "transfer-encoding" in self.headers:
            raise HttpError(411, "chunked request bodies are not supported; send Content-Length")
        raw = self.headers.get("content-length")
        if raw is None:
            if required:
                raise HttpError(411, "Content-Length header required")
            return 0
        if not raw.isdigit():
            raise HttpError(400, f"bad Content-Length {raw!r}")
        return int(raw)


async def read_request_line(reader: asyncio.StreamReader) -> Optional[bytes]:
    """The next request line, or None when the client closed the connection."""
    for _ in range(4):  # RFC 9112: tolerate stray CRLFs between requests
        try:
            line = await reader.readline()
        except ValueError:  # the StreamReader limit
            raise HttpError(414, "request line too long") from None
        if not line.endswith(b"\n"):
            return None  # EOF (readline returns a partial line there)
        if line.strip():
            return line
    return None


async def read_head(reader: asyncio.StreamReader, line: bytes) -> Request:
    """Parse ``line`` and read the headers after it. Timeouts are the caller's (one timer per
    phase is much cheaper than ``wait_for`` around every read)."""
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in _VERSIONS:
        raise HttpError(505 if version.startswith("HTTP/") else 400, f"unsupported protocol {version[:16]!r}")
    headers: Dict[str, str] = {}
    size, count = len(line), 0
    while True:
        try:
            raw = await reader.readline()
        except ValueError:
            raise HttpError(431, "header line too long") from None
        if not raw.endswith(b"\n"):
            raise ConnectionResetError("client closed the connection mid-request")
        if raw in (b"\r\n", b"\n"):
            break
        size, count = size + len(raw), count + 1
        if size > MAX_HEAD_BYTES or count > MAX_HEADERS:
            raise HttpError(431, f"request headers exceed {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key, value = name.lower(), value.strip()
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise HttpError(400, "conflicting Content-Length headers")
            value = headers[key] if key == "content-length" else f"{headers[key]}, {value}"
        headers[key] = value
    return Request(method.upper(), target, version, headers)


async def read_body(reader: asyncio.StreamReader, length: int) -> bytes:
    if length == 0:
        return b""
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("client closed the connection mid-body") from None


def response(status: int, body: bytes, content_type: str = "application/json", keep_alive: bool = True, headers: Iterable[Tuple[str, str]] = ()) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Server: metaedge-runtime/2",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, payload: Any, keep_alive: bool = True, headers: Iterable[Tuple[str, str]] = ()) -> bytes:
    return response(status, (json.dumps(payload) + "\n").encode(), keep_alive=keep_alive, headers=headers)
