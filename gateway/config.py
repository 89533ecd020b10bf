"""The `[gateway]` section: where the gateway listens, what it fronts, and its limits.

Example::

    [gateway]
    host = "127.0.0.1"
    port = 9090
    admin_port = 9091
    default_service = "Base"          # where callers without TMultiplexedProtocol go
    default_deadline_ms = 5000
    deadlines_ms = { "Cache" = 1000, "Cache.get" = 200 }
    idempotent = ["*.getStatus", "Cache.get"]      # replaces DEFAULT_IDEMPOTENT
    sticky = ["Filestore.append_chunk"]            # replaces DEFAULT_STICKY

    [gateway.upstreams]
    Cache = ["127.0.0.1:9101", "127.0.0.1:9102"]
    Jobs = ["127.0.0.1:9201"]

    [gateway.rate_limits]
    Cache = { rate_per_s = 1000, burst = 2000 }

    [[gateway.access]]
    callers = ["127.0.0.0/8", "cn:ops"]           # source networks or TLS identities
    allow = ["Cache.flush"]                        # admin methods must be named to be allowed

    [gateway.tls]
    certfile = "gateway.pem"
    keyfile = "gateway.key"
    cafile = "callers-ca.pem"                      # set: callers must present a certificate

Units live in names: `_ms` milliseconds, `_bytes` bytes, `_per_s` per second. Every limit has a
named default below; `validate()` names the key that is wrong.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

#: Callers without TMultiplexedProtocol are routed here; "Base" is answered by the gateway.
DEFAULT_SERVICE = "Base"
#: A call without a configured deadline gets this much time, in milliseconds.
DEFAULT_DEADLINE_MS = 5000
#: The deadline a THeader caller may ask for is capped at this, in milliseconds.
MAX_DEADLINE_MS = 600_000
#: Largest caller frame accepted; a larger one is answered 413 (framed) or closes (unframed).
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Caller connections held at once; beyond it new connections are closed at accept.
DEFAULT_MAX_CONNECTIONS = 20_000
#: Connections one caller (source address or TLS identity) may hold at once.
DEFAULT_MAX_CONNECTIONS_PER_CALLER = 5_000
#: Requests in flight through the gateway at once; beyond it calls get a retryable 503.
DEFAULT_MAX_INFLIGHT = 10_000
#: A caller connection with no complete request for this long is closed, in milliseconds.
DEFAULT_IDLE_TIMEOUT_MS = 300_000
#: Upstream connections per instance; calls share them (pipelined) beyond this many. Few
#: connections carrying many calls each cost the gateway and the instance far less per call
#: than a connection per call: the calls of one turn of the event loop share one write and
#: one read at each end.
DEFAULT_CONNECTIONS_PER_INSTANCE = 4
#: Calls one upstream connection carries at once before the instance counts as full.
DEFAULT_PIPELINE_DEPTH = 512
#: Connecting to an upstream instance may take this long, in milliseconds.
DEFAULT_CONNECT_TIMEOUT_MS = 1000
#: Active health check period and timeout, in milliseconds.
DEFAULT_HEALTH_INTERVAL_MS = 1000
DEFAULT_HEALTH_TIMEOUT_MS = 1000
#: Consecutive failures that eject an instance, and for how long, in milliseconds.
DEFAULT_EJECT_AFTER_FAILURES = 3
DEFAULT_EJECTION_MS = 5000
#: Retries may add at most this fraction of the calls, plus `DEFAULT_RETRY_MIN_PER_S`.
DEFAULT_RETRY_BUDGET_RATIO = 0.2
DEFAULT_RETRY_MIN_PER_S = 10.0
#: Attempts per call at most (the first one included).
DEFAULT_MAX_ATTEMPTS = 3
#: TLS handshakes must finish within this, in milliseconds.
DEFAULT_TLS_HANDSHAKE_MS = 5000
#: How long SIGTERM waits for in-flight calls, in milliseconds.
DEFAULT_DRAIN_GRACE_MS = 10_000
#: Rate-limit buckets kept at most (one per caller and service); full ones are dropped first.
DEFAULT_MAX_BUCKETS = 100_000

#: Methods that are safe to send twice (reads), unless the config lists its own.
DEFAULT_IDEMPOTENT = (
    "*.getName", "*.getVersion", "*.getStatus", "*.getStatusDetails", "*.aliveSince",
    "*.getCounters", "*.getCounter",
    "Cache.get", "Cache.get_multi", "Cache.server_for_key", "Cache.servers", "Cache.stats",
    "Cache.versions",
    "Filestore.fetch", "Filestore.fetch_range", "Filestore.get_paths", "Filestore.exists",
    "Filestore.info", "Filestore.list_keys", "Filestore.domains",
    "Jobs.status", "Jobs.status_by_unique", "Jobs.fetch_result", "Jobs.functions",
    "Jobs.workers",
)
#: Methods whose calls must reach the instance holding their state: an upload session lives
#: in the filestore instance that began it. Each caller connection sticks to one instance
#: per service for these (see `Gateway._sticky_pick`), unless the config lists its own.
DEFAULT_STICKY = (
    "Filestore.begin_upload", "Filestore.append_chunk", "Filestore.finish_upload",
    "Filestore.abort_upload",
)
#: Methods denied unless an access rule names them (or "admin") in `allow`.
DEFAULT_ADMIN_METHODS = (
    "Cache.flush",
    "Filestore.create_domain", "Filestore.delete_domain", "Filestore.create_class",
    "Filestore.update_class", "Filestore.delete_class",
    "Jobs.cancel", "Jobs.cancel_scheduled",
)


@dataclass(frozen=True)
class RateLimitConfig:
    """A token bucket per caller for one service: `rate_per_s` calls/s, bursts of `burst`."""

    rate_per_s: float = 100.0
    burst: int = 100

    def validate(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")


@dataclass(frozen=True)
class AccessRule:
    """Applies to callers matching `callers` (CIDR networks, "cn:<TLS identity>" or "*").

    `deny` then `allow` are checked against "Service.method" with patterns "Service.method",
    "Service.*", "*.method", "*" and "admin" (the admin methods). The first rule that decides
    wins; admin methods are only allowed by a pattern naming them or "admin".
    """

    callers: list[str] = field(default_factory=lambda: ["*"])
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for c in self.callers:
            if c == "*" or c.startswith("cn:"):
                continue
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"callers: {c!r} is not a network, cn:NAME or *") from None
        for p in [*self.allow, *self.deny]:
            if p not in ("*", "admin") and "." not in p:
                raise ValueError(f"pattern {p!r}: want Service.method, Service.*, * or admin")


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the caller port. With `cafile`, callers must present a certificate it signed;
    their identity (for rate limits and access rules) is the certificate's common name."""

    certfile: str = ""
    keyfile: str = ""
    cafile: str = ""
    handshake_timeout_ms: int = DEFAULT_TLS_HANDSHAKE_MS

    @property
    def enabled(self) -> bool:
        return bool(self.certfile)

    def validate(self) -> None:
        if (self.cafile or self.keyfile) and not self.certfile:
            raise ValueError("certfile is required when keyfile or cafile is set")


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    #: Admin HTTP (metrics, status page); 0 picks a free port, -1 turns it off.
    admin_host: str = "127.0.0.1"
    admin_port: int = 9091
    #: Service name -> ["host:port", ...] of its instances.
    upstreams: dict[str, list[str]] = field(default_factory=dict)
    default_service: str = DEFAULT_SERVICE
    default_deadline_ms: int = DEFAULT_DEADLINE_MS
    #: "Service" or "Service.method" -> milliseconds (the method's entry wins).
    deadlines_ms: dict[str, int] = field(default_factory=dict)
    #: Methods safe to send twice; setting it replaces DEFAULT_IDEMPOTENT.
    idempotent: list[str] = field(default_factory=lambda: list(DEFAULT_IDEMPOTENT))
    #: Methods a caller connection sends to one instance; setting it replaces DEFAULT_STICKY.
    sticky: list[str] = field(default_factory=lambda: list(DEFAULT_STICKY))
    admin_methods: list[str] = field(default_factory=lambda: list(DEFAULT_ADMIN_METHODS))
    #: "Service.method" always treated as oneway (for callers that send oneway calls as CALL).
    oneway: list[str] = field(default_factory=list)
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_caller: int = DEFAULT_MAX_CONNECTIONS_PER_CALLER
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS
    connections_per_instance: int = DEFAULT_CONNECTIONS_PER_INSTANCE
    pipeline_depth: int = DEFAULT_PIPELINE_DEPTH
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS
    health_interval_ms: int = DEFAULT_HEALTH_INTERVAL_MS
    health_timeout_ms: int = DEFAULT_HEALTH_TIMEOUT_MS
    eject_after_failures: int = DEFAULT_EJECT_AFTER_FAILURES
    ejection_ms: int = DEFAULT_EJECTION_MS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_budget_ratio: float = DEFAULT_RETRY_BUDGET_RATIO
    retry_min_per_s: float = DEFAULT_RETRY_MIN_PER_S
    drain_grace_ms: int = DEFAULT_DRAIN_GRACE_MS
    rate_limits: dict[str, RateLimitConfig] = field(default_factory=dict)
    max_buckets: int = DEFAULT_MAX_BUCKETS
    access: list[AccessRule] = field(default_factory=list)
    #: Callers (source networks / cn:NAME) whose rules are checked; see AccessRule.
    default_allow: bool = True
    tls: TlsConfig = field(default_factory=TlsConfig)
    #: JSON access log lines (logger "gateway.access") for every call.
    access_log: bool = True

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")
        for service, addrs in self.upstreams.items():
            if not service.isidentifier():
                raise ValueError(f"upstreams.{service}: not a service name")
            if not addrs:
                raise ValueError(f"upstreams.{service}: list at least one host:port")
            for a in addrs:
                parse_address(a, f"upstreams.{service}")
        for name in ("default_deadline_ms", "max_frame_bytes", "max_connections",
                     "max_connections_per_caller", "max_inflight", "idle_timeout_ms",
                     "connections_per_instance", "pipeline_depth", "connect_timeout_ms",
                     "health_interval_ms", "health_timeout_ms", "eject_after_failures",
                     "ejection_ms", "max_attempts", "max_buckets"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for key, ms in self.deadlines_ms.items():
            if ms <= 0 or ms > MAX_DEADLINE_MS:
                raise ValueError(f"deadlines_ms.{key}: want 1..{MAX_DEADLINE_MS} ms")
        for name in ("idempotent", "sticky", "admin_methods", "oneway"):
            for p in getattr(self, name):
                if "." not in p:
                    raise ValueError(f"{name}: {p!r} is not Service.method")
        if not 0 <= self.retry_budget_ratio <= 1:
            raise ValueError("retry_budget_ratio must be within 0..1")


def parse_address(text: str, key: str = "address") -> tuple[str, int]:
    """("host", port) from "host:port"; ValueError naming `key` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{key}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def matches(patterns: tuple[str, ...] | list[str] | frozenset[str], service: str,
            method: str) -> bool:
    """Whether "service.method" matches any of "S.m", "S.*", "*.m" or "*"."""
    return (
        f"{service}.{method}" in patterns
        or f"{service}.*" in patterns
        or f"*.{method}" in patterns
        or "*" in patterns
    )
