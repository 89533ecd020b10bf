"""Calling a glammp port from Python: generated clients and a generic JSON bridge.

`connect(host, port, "Cache")` returns the generated `glammp.cache.Cache.Client` over framed
binary with TMultiplexedProtocol (the dialect every language's example uses). `call_json`
calls any method by name with JSON-shaped arguments and returns a JSON-shaped result; it is
what `glammp call` uses.

Binary fields go in and out as UTF-8 text when they are text, and as {"base64": "..."}
otherwise.
"""

from __future__ import annotations

import base64
import importlib
from types import ModuleType
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TType
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TFramedTransport, TTransportException

from services.core import binary

#: Multiplexed service name -> generated module.
MODULES = {
    "Base": "glammp.base.Base",
    "Cache": "glammp.cache.Cache",
    "Jobs": "glammp.jobs.Jobs",
    "Filestore": "glammp.filestore.Filestore",
}
#: Socket timeout of `connect`, in seconds.
DEFAULT_TIMEOUT_S = 10.0
#: Largest string or container a reply may carry, as the server's own default limits.
DEFAULT_MAX_STRING_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_CONTAINER_ITEMS = 1_000_000


class LinearSocket(TSocket):
    """A TSocket whose readAll is linear in the frame size: Thrift's joins chunks with
    `bytes +=`, which is quadratic and dominates multi-MiB replies on the caller's side."""

    def readAll(self, sz: int) -> bytes:  # noqa: N802 - Thrift's name
        buf = bytearray(sz)
        view, have = memoryview(buf), 0
        while have < sz:
            try:
                n = self.handle.recv_into(view[have:])
            except TimeoutError:
                raise TTransportException(TTransportException.TIMED_OUT,
                                          "read timed out") from None
            except OSError as e:
                raise TTransportException(TTransportException.UNKNOWN, str(e)) from None
            if n == 0:
                raise TTransportException(TTransportException.END_OF_FILE, "peer closed")
            have += n
        return bytes(buf)


def service_module(service: str) -> ModuleType:
    try:
        return importlib.import_module(MODULES[service])
    except KeyError:
        raise ValueError(f"unknown service {service!r} (known: {', '.join(MODULES)})") from None


class connect:  # noqa: N801 - used like a function: `with connect(...) as client:`
    """A connected generated client for `service`; closed when the `with` block ends.

    Replies are held to the same limits the server applies to requests: a string longer than
    `max_string_bytes` fails the call with a TProtocolException (SIZE_LIMIT).

    A class, not a `contextlib.contextmanager`: that one sets `__traceback__` on an exception
    leaving the block, which Thrift's immutable generated exceptions refuse, turning a
    ServiceError into a TypeError.
    """

    def __init__(
        self,
        host: str,
        port: int,
        service: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
    ) -> None:
        sock = LinearSocket(host, port)
        sock.setTimeout(timeout_s * 1000)
        self.trans = TFramedTransport(sock)
        base = TBinaryProtocolAccelerated(self.trans, string_length_limit=max_string_bytes,
                                          container_length_limit=DEFAULT_MAX_CONTAINER_ITEMS)
        # Large binary arguments (a file, a big value) skip the C encoder's slow copy. A
        # staticmethod: TMultiplexedProtocol copies the protocol's attributes into a class,
        # where a plain function would become a method.
        base._fast_encode = staticmethod(binary.encode_binary)
        self.client = service_module(service).Client(TMultiplexedProtocol(base, service))

    def __enter__(self) -> Any:
        self.trans.open()
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.trans.close()


def _from_json(ttype: int, spec: Any, value: Any) -> Any:
    if value is None:
        return None
    if ttype == TType.STRING:
        if spec == "BINARY":
            if isinstance(value, dict) and "base64" in value:
                return base64.b64decode(value["base64"])
            return str(value).encode()
        return str(value)
    if ttype == TType.STRUCT:
        cls, fields = spec[0], spec[0].thrift_spec
        obj = cls()
        for f in fields:
            if f is not None and f[2] in value:
                setattr(obj, f[2], _from_json(f[1], f[3], value[f[2]]))
        return obj
    if ttype in (TType.LIST, TType.SET):
        items = [_from_json(spec[0], spec[1], v) for v in value]
        return set(items) if ttype == TType.SET else items
    if ttype == TType.MAP:
        return {
            _from_json(spec[0], spec[1], k): _from_json(spec[2], spec[3], v)
            for k, v in value.items()
        }
    if ttype == TType.BOOL:
        return bool(value)
    if ttype == TType.DOUBLE:
        return float(value)
    if isinstance(spec, type) and isinstance(value, str):  # an enum given by name
        return getattr(spec, "_NAMES_TO_VALUES")[value]  # noqa: B009
    return int(value)


def to_json(value: Any) -> Any:
    """Thrift values as JSON-shaped data (structs as dicts, enums as ints)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if hasattr(value, "thrift_spec"):
        return {
            f[2]: to_json(getattr(value, f[2]))
            for f in value.thrift_spec
            if f is not None and getattr(value, f[2]) is not None
        }
    return value


def call_json(client: Any, service: str, method: str, args: list[Any]) -> Any:
    """Calls `method` on a generated client with JSON-shaped positional arguments."""
    args_cls = None
    for cls in type(client).__mro__:
        owner = importlib.import_module(cls.__module__)
        args_cls = getattr(owner, f"{method}_args", None)
        if args_cls is not None:
            break
    if args_cls is None:
        raise ValueError(f"{service} has no method {method!r}")
    spec = [f for f in args_cls.thrift_spec if f is not None]
    if len(args) > len(spec):
        raise ValueError(f"{method} takes at most {len(spec)} arguments")
    converted = [_from_json(f[1], f[3], a) for f, a in zip(spec, args, strict=False)]
    converted += [None] * (len(spec) - len(converted))
    return to_json(getattr(client, method)(*converted))
