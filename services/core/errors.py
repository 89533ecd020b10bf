"""The one error every caller sees, and the deadline that produces 504.

Handlers raise `ServiceError` through the constructors below; the server's boundary
(`services.core.dispatch`) turns everything else into a 500 with a request id, and a
`DeadlineExceeded` into a 504. The table of what means what:

=================================  ====  =========  ==========================================
situation                          code  retryable  notes
=================================  ====  =========  ==========================================
invalid argument (key, size ...)   400   no         `details` names the argument and the rule
unknown thing (file, pool ...)     404   no
state conflict                     409   no
value/frame over a limit           413   no
rate limited                       429   yes        `retry_after_ms` says when
undeclared exception in a handler  500   no         traceback logged under `request_id`
method not implemented yet         501   no
backend answered nonsense          502   no         e.g. an unexpected memcached reply
backend unreachable / overloaded   503   yes        the request did not reach a backend
deadline expired                   504   per call   retryable only for idempotent methods
no storage left                    507   no
job outcome unknown                1001  no         foreground job whose connection dropped
checksum mismatch                  1002  no
=================================  ====  =========  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping

import gevent

from glammp.common.ttypes import ErrorCode, ServiceError

__all__ = [
    "DeadlineExceeded",
    "ErrorCode",
    "ServiceError",
    "bad_gateway",
    "bad_request",
    "conflict",
    "forbidden",
    "insufficient_storage",
    "internal",
    "not_found",
    "not_implemented",
    "service_error",
    "timeout",
    "too_large",
    "too_many_requests",
    "unavailable",
    "with_context",
]


class DeadlineExceeded(gevent.Timeout):
    """A call's deadline passed. A `BaseException` (via `gevent.Timeout`), so no handler's
    `except Exception` can swallow it; the server's boundary answers it with a 504."""


def service_error(
    code: int,
    message: str,
    *,
    retryable: bool | None = None,
    retry_after_ms: int | None = None,
    origin: str | None = None,
    details: Mapping[str, object] | None = None,
) -> ServiceError:
    """Builds a ServiceError; `details` values are turned into strings."""
    return ServiceError(
        code=code,
        message=message,
        details={k: str(v) for k, v in (details or {}).items()},
        retryable=retryable,
        retry_after_ms=retry_after_ms,
        origin=origin,
    )


def with_context(err: ServiceError, origin: str, request_id: str) -> ServiceError:
    """`err` with `origin` and `request_id` filled in where it has none (generated exceptions
    are immutable, so this is a copy when anything changes)."""
    if err.origin is not None and err.request_id is not None:
        return err
    return ServiceError(
        code=err.code if err.code is not None else ErrorCode.INTERNAL,
        message=err.message,
        details=err.details,
        retryable=err.retryable,
        retry_after_ms=err.retry_after_ms,
        origin=err.origin if err.origin is not None else origin,
        request_id=err.request_id if err.request_id is not None else request_id,
    )


def bad_request(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.BAD_REQUEST, message, retryable=False, details=details)


def forbidden(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.FORBIDDEN, message, retryable=False, details=details)


def not_found(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.NOT_FOUND, message, retryable=False, details=details)


def conflict(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.CONFLICT, message, retryable=False, details=details)


def too_large(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.PAYLOAD_TOO_LARGE, message, retryable=False, details=details)


def too_many_requests(message: str, retry_after_ms: int, **details: object) -> ServiceError:
    return service_error(
        ErrorCode.TOO_MANY_REQUESTS,
        message,
        retryable=True,
        retry_after_ms=retry_after_ms,
        details=details,
    )


def internal(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.INTERNAL, message, retryable=False, details=details)


def not_implemented(what: str) -> ServiceError:
    return service_error(
        ErrorCode.NOT_IMPLEMENTED, f"{what} is not implemented by this server", retryable=False
    )


def bad_gateway(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.BAD_GATEWAY, message, retryable=False, details=details)


def unavailable(
    message: str, retry_after_ms: int | None = None, **details: object
) -> ServiceError:
    """The request did not reach a backend: always safe to retry."""
    return service_error(
        ErrorCode.UNAVAILABLE, message, retryable=True, retry_after_ms=retry_after_ms,
        details=details,
    )


def timeout(message: str, retryable: bool = False, **details: object) -> ServiceError:
    return service_error(ErrorCode.TIMEOUT, message, retryable=retryable, details=details)


def insufficient_storage(message: str, **details: object) -> ServiceError:
    return service_error(ErrorCode.INSUFFICIENT_STORAGE, message, retryable=False, details=details)
