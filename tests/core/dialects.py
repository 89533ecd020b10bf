"""Thrift clients in every dialect the server accepts, for tests."""

from __future__ import annotations

from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.transport.THeaderTransport import (
    THeaderClientType,
    THeaderSubprotocolID,
    THeaderTransformID,
)
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TBufferedTransport, TFramedTransport

from services.client import service_module

DIALECTS = [
    "framed-binary",
    "framed-compact",
    "unframed-binary",
    "unframed-compact",
    "header-binary",
    "header-compact",
    "header-zlib",
]


class _Open:
    """Opens on enter, closes on exit; unlike contextlib.contextmanager it leaves exceptions
    untouched (Thrift's generated exceptions are immutable)."""

    def __init__(self, trans: Any, client: Any) -> None:
        self.trans, self.client = trans, client

    def __enter__(self) -> Any:
        self.trans.open()
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.trans.close()


def client(
    host: str,
    port: int,
    dialect: str,
    service: str = "Base",
    multiplexed: bool = True,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> _Open:
    sock = TSocket(host, port)
    sock.setTimeout(timeout_s * 1000)
    if dialect.startswith("header"):
        sub = (THeaderSubprotocolID.COMPACT if dialect == "header-compact"
               else THeaderSubprotocolID.BINARY)
        proto: Any = THeaderProtocol(sock, [THeaderClientType.HEADERS], sub)
        trans: Any = proto.trans
        if dialect == "header-zlib":
            trans.add_transform(THeaderTransformID.ZLIB)
        for k, v in (headers or {}).items():
            trans.set_header(k.encode(), v.encode())
    else:
        framing, codec = dialect.split("-")
        trans = TFramedTransport(sock) if framing == "framed" else TBufferedTransport(sock)
        proto = TBinaryProtocol(trans) if codec == "binary" else TCompactProtocol(trans)
    if multiplexed:
        proto = TMultiplexedProtocol(proto, service)
    return _Open(trans, service_module(service).Client(proto))
