/**
 * Types shared by every glammp service: the one error every caller sees.
 *
 * Every method of every glammp service declares `throws (1: common.ServiceError err)` as its
 * first exception, so a gateway can answer any method with a typed error without knowing that
 * method's IDL: the error is always field 1 of `<method>_result`.
 */
namespace py glammp.common
namespace php Glammp.Common
namespace java org.glammp.common
namespace js Glammp.Common
namespace go glammp.common
namespace rb Glammp.Common
namespace perl Glammp.Common

/**
 * Error codes, aligned with HTTP where a status fits; service-specific codes are above 1000.
 * `ServiceError.code` is a plain i32 so that a caller built from an older IDL still reads a
 * code it does not know.
 */
enum ErrorCode {
  /** The request is malformed: a bad key, an argument out of range. Never retryable. */
  BAD_REQUEST = 400,
  /** The caller is not authenticated. */
  UNAUTHORIZED = 401,
  /** An access rule denies this caller the method. */
  FORBIDDEN = 403,
  /** The named thing (file, job handle, pool, domain) does not exist. */
  NOT_FOUND = 404,
  /** The request conflicts with current state (e.g. a domain that still has files). */
  CONFLICT = 409,
  /** A precondition the caller stated does not hold. */
  PRECONDITION_FAILED = 412,
  /** A value, frame or file exceeds a configured limit. */
  PAYLOAD_TOO_LARGE = 413,
  /** The caller is over a rate limit; see `retry_after_ms`. Retryable. */
  TOO_MANY_REQUESTS = 429,
  /** An unexpected failure inside glammp; the log has the traceback under `request_id`. */
  INTERNAL = 500,
  /** The method is part of the contract but not implemented by this server yet. */
  NOT_IMPLEMENTED = 501,
  /** A backend answered something glammp did not expect. */
  BAD_GATEWAY = 502,
  /** No backend or server could take the request; it did not reach a backend. Retryable. */
  UNAVAILABLE = 503,
  /** The call's deadline expired. Retryable only for idempotent methods. */
  TIMEOUT = 504,
  /** No storage is left (e.g. no writable MogileFS device). */
  INSUFFICIENT_STORAGE = 507,
  /**
   * A foreground job was submitted but the connection to its gearmand dropped before the
   * outcome arrived: it may or may not have run. Never retried automatically.
   */
  JOB_OUTCOME_UNKNOWN = 1001,
  /** A stored value failed its checksum (a corrupted copy or a torn large value). */
  CHECKSUM_MISMATCH = 1002,
}

/**
 * The one exception every glammp method can raise: "the call did not do what you asked".
 * A domain outcome (a cache miss, `add` on an existing key, a failed Gearman job) is a result,
 * not a ServiceError.
 */
exception ServiceError {
  /** An `ErrorCode` value (or a newer code this IDL does not list yet). */
  1: i32 code,
  /** One line for a person: what failed and, where known, why. */
  2: string message,
  /** Machine-readable context, e.g. {"key": "...", "rule": "max 250 bytes"}. */
  3: map<string, string> details,
  /** True when sending the same request again may succeed. */
  4: optional bool retryable,
  /** When retryable, how long to wait before retrying, in milliseconds. */
  5: optional i32 retry_after_ms,
  /** Which component produced the error: "gateway", "cache", "jobs", "filestore", ... */
  6: optional string origin,
  /** Identifies the request in the server's logs. */
  7: optional string request_id,
}
