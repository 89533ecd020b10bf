/**
 * The base service in the fb303 tradition, served on every glammp port: under the multiplexed
 * name "Base", and as the default for callers that do not use TMultiplexedProtocol.
 * Every other glammp service extends it, so `Cache:getStatus` works too.
 */
include "common.thrift"

namespace py glammp.base
namespace php Glammp.Base
namespace java org.glammp.base
namespace js Glammp.Base
namespace go glammp.base
namespace rb Glammp.Base
namespace perl Glammp.Base

/** A server's life cycle, with fb303's values. */
enum Status {
  DEAD = 0,
  STARTING = 1,
  ALIVE = 2,
  /** Draining after SIGTERM: finishing in-flight calls, accepting no new connections. */
  STOPPING = 3,
  STOPPED = 4,
  /** Serving, but something needs attention (e.g. a backend is down); see getStatusDetails. */
  WARNING = 5,
}

service Base {
  /** The server's name, e.g. "glammp". */
  string getName() throws (1: common.ServiceError err),
  /** The glammp version. */
  string getVersion() throws (1: common.ServiceError err),
  /** The current status. */
  Status getStatus() throws (1: common.ServiceError err),
  /** One line for a person explaining the status (empty when ALIVE and nothing to say). */
  string getStatusDetails() throws (1: common.ServiceError err),
  /** When the server started, in seconds since the Unix epoch. */
  i64 aliveSince() throws (1: common.ServiceError err),
  /** Every counter the server keeps (requests, errors, ...), summed over its processes. */
  map<string, i64> getCounters() throws (1: common.ServiceError err),
  /** One counter; 0 when it does not exist. */
  i64 getCounter(1: string key) throws (1: common.ServiceError err),
}
