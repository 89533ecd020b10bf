"""Routing one Thrift message to a handler, behind the one exception boundary.

A `Dispatcher` holds the mounted services. `dispatch(iprot, oprot, ...)` reads one message,
finds the method by its multiplexed name (`Cache:get`; a bare `getStatus` goes to the default
service, the base service), reads the arguments with the generated `<method>_args` class,
calls the handler under the method's deadline, and writes `<method>_result`.

Unlike Thrift's stock `TMultiplexedProcessor`, nothing is created per message but the
argument and result structs: the method table is built once at mount time.

The boundary, for every call:

* `ServiceError` raised by the handler is the declared exception (field 1 of every result).
* Any other `Exception` becomes `ServiceError(500)` with the request id; the traceback is logged
  under that id and never sent.
* The deadline is a `DeadlineExceeded` (a `gevent.Timeout`, so a `BaseException` no handler's
  `except Exception` can swallow); it becomes `ServiceError(504)`, retryable only when the
  method is declared idempotent.
* A method the IDL declares but the handler does not define answers `ServiceError(501)`.
* When `max_inflight` requests are already running, the call is answered at once with
  `ServiceError(503, retryable)` without running it.
* An unknown service or method answers `TApplicationException(UNKNOWN_METHOD)`.

A handler may also define `<method>_wire`, taking the same arguments and returning the
success value already encoded in the binary protocol (the field's body, without its header).
The binary fast path calls it instead of `<method>`, for results whose generic encoding costs
more than the call (the cache's `get_multi` builds no `Item` objects this way).

A method whose result is `binary` may return a `services.core.streams.StreamedBody`: the
binary fast path hands it to the server to write as it arrives; everywhere else it is read
whole within the call.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from types import ModuleType
from typing import Any

from thrift.protocol import fastbinary
from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TProtocol import TProtocolBase, TProtocolException
from thrift.Thrift import TApplicationException, TMessageType, TType

from glammp.common.ttypes import ServiceError
from services.core import binary, errors
from services.core.context import CallContext, ConnectionState, set_current
from services.core.metrics import Metrics
from services.core.streams import StreamedBody

log = logging.getLogger(__name__)

_decode_binary = fastbinary.decode_binary
_encode_binary = fastbinary.encode_binary

#: The deadline of a method that names none, in milliseconds.
DEFAULT_DEADLINE_MS = 5000
#: Requests one process runs at once before answering 503.
DEFAULT_MAX_INFLIGHT = 1000
#: The deadline a caller may ask for with THeader's Deadline-Budget is capped at this, in ms.
MAX_DEADLINE_MS = 600_000
#: The THeader info header carrying the caller's remaining budget, in milliseconds.
DEADLINE_HEADER = "Deadline-Budget"
#: The multiplexed name of the base service, which is also the default service.
BASE_SERVICE = "Base"
#: Returned by `dispatch_binary` for messages the fast path leaves to `dispatch`.
NOT_FAST = object()

_I32 = struct.Struct(">i")
_REPLY_HEADER = b"\x80\x01\x00\x02"
_BINARY_SUCCESS = b"\x0b\x00\x00"  # field type STRING, field id 0


@dataclass(frozen=True)
class Mount:
    """A service to serve: its multiplexed name, generated module and handler."""

    name: str
    module: ModuleType
    handler: object
    origin: str
    deadlines_ms: dict[str, int] = field(default_factory=dict)
    idempotent: frozenset[str] = frozenset()


@dataclass
class Method:
    service: str
    name: str
    args_cls: type
    result_cls: type | None  # None: oneway
    arg_names: tuple[str, ...]
    has_success: bool
    fn: Callable[..., Any] | None  # None: not implemented by the handler
    deadline_s: float
    idempotent: bool
    origin: str
    labels: tuple[str, str]
    #: The C codec's type arguments for the args and result structs.
    args_type: list[Any] = field(default_factory=list)
    result_type: list[Any] | None = None
    #: The result's success is `binary` (e.g. Filestore.fetch): written without the encoder.
    binary_success: bool = False
    #: The result's encoder: Thrift's C encoder, or `binary.encode_binary` for results that
    #: may carry a large binary value (which the C encoder copies byte by byte).
    encode: Callable[[Any, Any], bytes] = _encode_binary
    #: The handler's `<method>_wire`, and the success field's header for what it returns.
    wire_fn: Callable[..., bytes] | None = None
    success_header: bytes = b""
    #: Binary REPLY message header up to the seqid. Replies carry the bare method name, as
    #: Apache's TMultiplexedProcessor's do: Go's and Node's clients reject "Service:method".
    reply_header: bytes = b""


def _service_methods(module: ModuleType) -> Iterable[tuple[ModuleType, str]]:
    """(module defining it, name) for every method of the service, inherited ones included."""
    seen: set[str] = set()
    for cls in module.Iface.__mro__:
        owner = sys.modules.get(cls.__module__)
        if owner is None or not hasattr(owner, "Processor") or cls.__name__ != "Iface":
            continue
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("_") and name not in seen:
                seen.add(name)
                yield owner, name


class Dispatcher:
    """The method table of every mounted service, and the boundary around each call."""

    def __init__(
        self,
        mounts: Iterable[Mount],
        metrics: Metrics,
        default_deadline_ms: int = DEFAULT_DEADLINE_MS,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        deadline_overrides_ms: dict[str, int] | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.methods: dict[str, Method] = {}
        self.handlers: dict[str, object] = {}
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{os.urandom(3).hex()}"
        overrides = deadline_overrides_ms or {}
        base_handler = None
        mounts = list(mounts)
        for mount in mounts:
            if mount.name == BASE_SERVICE:
                base_handler = mount.handler
        for mount in mounts:
            self.handlers[mount.name] = mount.handler
            for owner, name in _service_methods(mount.module):
                fn = getattr(mount.handler, name, None)
                if fn is None and base_handler is not None and owner.__name__.endswith(".Base"):
                    fn = getattr(base_handler, name, None)
                args_cls = owner.__dict__[f"{name}_args"]
                arg_names = tuple(s[2] for s in args_cls.thrift_spec if s is not None)
                result_cls = owner.__dict__.get(f"{name}_result")
                success_spec = result_cls.thrift_spec[0] if result_cls is not None else None
                has_success = success_spec is not None and success_spec[2] == "success"
                binary_success = bool(
                    has_success
                    and success_spec is not None
                    and tuple(success_spec[1:4]) == (TType.STRING, "success", "BINARY")
                )
                wire_fn = getattr(mount.handler, f"{name}_wire", None) if has_success else None
                deadline_ms = overrides.get(
                    f"{mount.name}.{name}", mount.deadlines_ms.get(name, default_deadline_ms)
                )
                self.methods[f"{mount.name}:{name}"] = Method(
                    service=mount.name,
                    name=name,
                    args_cls=args_cls,
                    args_type=[args_cls, args_cls.thrift_spec],
                    result_type=None if result_cls is None else [result_cls,
                                                                  result_cls.thrift_spec],
                    result_cls=result_cls,
                    arg_names=arg_names,
                    has_success=has_success,
                    binary_success=binary_success,
                    wire_fn=wire_fn,
                    encode=(binary.encode_binary
                            if result_cls is not None and binary.spec_holds_binary(
                                result_cls.thrift_spec) else _encode_binary),
                    success_header=b"" if success_spec is None else bytes([success_spec[1], 0, 0]),
                    reply_header=_REPLY_HEADER + _I32.pack(len(name.encode())) + name.encode(),
                    fn=fn,
                    deadline_s=deadline_ms / 1000.0,
                    idempotent=name in mount.idempotent,
                    origin=mount.origin,
                    labels=(mount.name, name),
                )
        if BASE_SERVICE in self.handlers:
            for method in list(self.methods.values()):
                if method.service == BASE_SERVICE:
                    self.methods[method.name] = method

    def new_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def dispatch_binary(
        self, payload: bytes, iprot: TBinaryProtocolAccelerated, conn: ConnectionState
    ) -> list[bytes] | None | object:
        """The fast path for strict binary messages: the message header is parsed and written
        here, the arguments and result go through the C codec directly.

        `iprot` is the connection's reusable protocol over a TMemoryBuffer. Returns the reply
        payload as pieces to join (without framing), None for a oneway call, or `NOT_FAST`
        when the message must go through `dispatch` (unknown names, odd message types);
        raises on a malformed message.
        """
        if len(payload) < 12 or payload[:3] != b"\x80\x01\x00":
            raise TProtocolException(TProtocolException.BAD_VERSION, "bad binary header")
        mtype = payload[3]
        size = _I32.unpack_from(payload, 4)[0]
        end = 8 + size
        if size < 0 or end + 4 > len(payload):
            raise TProtocolException(TProtocolException.INVALID_DATA, "bad message name")
        method = self.methods.get(payload[8:end].decode())
        if method is None or mtype not in (TMessageType.CALL, TMessageType.ONEWAY):
            return NOT_FAST
        trans = iprot.trans
        trans._buffer = BytesIO(payload)
        trans._buffer.seek(end + 4)
        args = method.args_cls()
        _decode_binary(args, iprot, method.args_type)
        wire_fn = method.wire_fn
        result = self.call(method, args, conn, None, wire_fn, streamed=True)
        if result is None:
            return None
        seqid = payload[end : end + 4]
        if wire_fn is not None and result.err is None:
            return [method.reply_header, seqid, method.success_header, result.success, b"\0"]
        value = result.success if method.binary_success else None
        if isinstance(value, (bytes, bytearray, StreamedBody)) and result.err is None:
            # The C encoder copies a large binary result byte by byte (~0.8 ms per MiB);
            # field 0, type STRING, then the bytes and the struct's stop byte. A streamed
            # body stays a piece of its own, written by the server as it arrives.
            return [method.reply_header, seqid, _BINARY_SUCCESS, _I32.pack(len(value)), value,
                    b"\0"]
        return [method.reply_header, seqid, method.encode(result, method.result_type)]

    def dispatch(
        self,
        iprot: TProtocolBase,
        oprot: TProtocolBase,
        conn: ConnectionState,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Serves one message from `iprot`, writing any reply to `oprot` (not flushed).

        Returns whether a reply was written (False for oneway calls). Transport and protocol
        errors while reading propagate: the caller decides what they do to the connection.
        """
        name, mtype, seqid = iprot.readMessageBegin()
        method = self.methods.get(name)
        if method is None or mtype not in (TMessageType.CALL, TMessageType.ONEWAY):
            iprot.skip(TType.STRUCT)
            iprot.readMessageEnd()
            self.metrics.count_unknown()
            what = "message type" if method is not None else "method"
            exc = TApplicationException(
                TApplicationException.UNKNOWN_METHOD
                if method is None
                else TApplicationException.INVALID_MESSAGE_TYPE,
                f"unknown {what}: {name!r}",
            )
            oprot.writeMessageBegin(name, TMessageType.EXCEPTION, seqid)
            exc.write(oprot)
            oprot.writeMessageEnd()
            return True

        args = method.args_cls()
        args.read(iprot)
        iprot.readMessageEnd()
        result = self.call(method, args, conn, headers)
        if method.result_cls is None:
            return False
        if method.binary_success and type(result.success) is bytearray:
            # A handler may answer a large binary as a bytearray (see dispatch_binary); the
            # generic encoders want bytes.
            result.success = bytes(result.success)
        oprot.writeMessageBegin(method.name, TMessageType.REPLY, seqid)
        result.write(oprot)
        oprot.writeMessageEnd()
        return True

    def call(
        self,
        method: Method,
        args: Any,
        conn: ConnectionState,
        headers: dict[str, str] | None,
        fn: Callable[..., Any] | None = None,
        streamed: bool = False,
    ) -> Any:
        """Runs the handler (`fn`, by default the method's) behind the boundary and returns
        the filled result struct. A `StreamedBody` result is read whole here (within the
        call's deadline, its failure the call's error) unless the caller sends it as it
        arrives (`streamed`)."""
        started = time.perf_counter()
        request_id: str | Callable[[], str] = self.new_request_id
        budget_s = method.deadline_s
        if headers:
            request_id = headers.get("Request-Id") or self.new_request_id
            budget = headers.get(DEADLINE_HEADER)
            if budget is not None and budget.isdigit():
                budget_s = min(int(budget), MAX_DEADLINE_MS) / 1000.0
        value = None
        err: ServiceError | None = None
        ctx: CallContext | None = None
        if method.fn is None:
            err = errors.not_implemented(f"{method.service}.{method.name}")
        elif self.metrics.active >= self.max_inflight:
            err = errors.unavailable(
                f"server busy: {self.max_inflight} requests in flight",
                retry_after_ms=50,
            )
        else:
            ctx = CallContext(
                request_id=request_id,
                service=method.service,
                method=method.name,
                deadline=time.monotonic() + budget_s,
                connection=conn,
                headers=headers or {},
            )
            set_current(ctx)
            self.metrics.active += 1
            # A connection's timers are reused (until one fires, below); a call takes its
            # timer out while it runs, so pipelined calls served at once never share one.
            timer = conn.timers.pop(budget_s, None)
            if timer is None:
                timer = errors.DeadlineExceeded(budget_s)
            timer.start()
            fired = False
            try:
                value = (fn or method.fn)(*[getattr(args, a) for a in method.arg_names])
                if method.binary_success and not streamed and isinstance(value, StreamedBody):
                    value = value.read_all()
            except ServiceError as e:
                err = e
            except errors.DeadlineExceeded as e:
                if e is not timer:
                    raise
                # A gevent Timeout restarted after it fired can fire again at once: never
                # reuse one that has fired.
                fired = True
                err = errors.timeout(
                    f"{method.service}.{method.name} did not finish within "
                    f"{budget_s * 1000:.0f} ms",
                    retryable=method.idempotent,
                )
            except Exception:
                log.exception(
                    "unexpected error in %s.%s",
                    method.service,
                    method.name,
                    extra={"request_id": ctx.request_id},
                )
                err = errors.internal(
                    f"internal error in {method.service}.{method.name}; "
                    f"see the server log for request {ctx.request_id}"
                )
            finally:
                timer.cancel()
                if not fired:
                    conn.timers[budget_s] = timer
                self.metrics.active -= 1
                set_current(None)
        code = 0
        if err is not None:
            if ctx is not None:
                rid = ctx.request_id
            else:
                rid = request_id if isinstance(request_id, str) else request_id()
            err = errors.with_context(err, method.origin, rid)
            code = err.code
        self.metrics.observe(method.labels, code, time.perf_counter() - started)
        if method.result_cls is None:
            if err is not None:
                log.warning(
                    "oneway %s.%s failed: %s",
                    method.service,
                    method.name,
                    err.message,
                    extra={"request_id": err.request_id, "code": code},
                )
            return None
        result = method.result_cls()
        if err is not None:
            result.err = err
        elif method.has_success:
            result.success = value
        return result

    def close_handlers(self) -> None:
        """Calls every handler's `close()`, logging failures."""
        for name, handler in self.handlers.items():
            close = getattr(handler, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("closing the %s handler failed", name)
