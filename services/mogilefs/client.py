"""A minimal tracker client for tools, the dev cluster and tests (not the filestore's client).

`TrackerClient.call("get_paths", domain="d", key="k")` sends one request on a persistent
connection and returns the reply's arguments as {name: str}; an `ERR` reply raises
`TrackerError` and leaves the connection usable. A network failure or timeout closes the
connection (its state is unknown) and the next call reconnects.
"""

from __future__ import annotations

import socket
from urllib.parse import quote_plus

from services.mogilefs import wire

#: Seconds for connect and for each reply.
DEFAULT_TIMEOUT_S = 30.0


class TrackerError(Exception):
    """The tracker answered `ERR <code> <text>`."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


def encode_args(args: dict[str, object]) -> str:
    """Form-encodes arguments (bytes values are sent as they are, escaped)."""
    parts = []
    for k, v in args.items():
        value = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(f"{quote_plus(k)}={quote_plus(value)}")
    return "&".join(parts)


class TrackerClient:
    def __init__(self, host: str, port: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def raw(self, line: bytes) -> bytes:
        """Sends one raw request line and returns one raw reply line (with its CRLF)."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self._sock.sendall(line + b"\r\n")
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("tracker closed the connection")
                self._buf += chunk
        except BaseException:
            self.close()
            raise
        reply, _, self._buf = self._buf.partition(b"\n")
        return reply + b"\n"

    def call_bytes(self, command: str, **args: object) -> dict[str, bytes]:
        ok, data = wire.decode_reply(self.raw(f"{command} {encode_args(args)}".encode()))
        if not ok:
            code, text = data  # type: ignore[misc]
            raise TrackerError(code, text)
        return data  # type: ignore[return-value]

    def call(self, command: str, **args: object) -> dict[str, str]:
        return {k: v.decode("utf-8", "replace")
                for k, v in self.call_bytes(command, **args).items()}

    def __enter__(self) -> TrackerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
