/**
 * The cache service: everything pecl/memcached does, over memcached pools that PHP shares.
 *
 * Keys follow memcached's text-protocol rules (1-250 bytes including the pool's prefix, no
 * whitespace or control characters); a bad key is ServiceError(400) naming the key and the rule.
 * Values are bytes plus 32-bit flags in pecl/memcached's layout (bits 0-3 the PHP type, 4-15
 * compression, 16-31 user flags), so items written by PHP read back with their type and items
 * written here read in PHP as the same PHP value.
 *
 * Servers are chosen with libmemcached-compatible ketama by default, so PHP with
 * OPT_LIBKETAMA_COMPATIBLE and this service agree on which server holds every key.
 */
include "common.thrift"
include "base.thrift"

namespace py glammp.cache
namespace php Glammp.Cache
namespace java org.glammp.cache
namespace js Glammp.Cache
namespace go glammp.cache
namespace rb Glammp.Cache
namespace perl Glammp.Cache

/** The PHP type of a value: pecl/memcached's flag bits 0-3. */
enum ValueType {
  /** Raw bytes / a PHP string. */
  STRING = 0,
  /** A PHP int, stored as decimal text ("42"). */
  LONG = 1,
  /** A PHP float, stored as text ("3.14"). */
  DOUBLE = 2,
  /** A PHP bool, stored as "1" (true) or "" (false). */
  BOOL = 3,
  /** PHP serialize() output (arrays, objects, null). */
  SERIALIZED = 4,
  IGBINARY = 5,
  JSON = 6,
  MSGPACK = 7,
}

/** The outcome of a store command; a domain result, not an error. */
enum StoreResult {
  STORED = 0,
  /** add on an existing key, replace/append/prepend on a missing one. */
  NOT_STORED = 1,
  /** cas with a stale token. */
  EXISTS = 2,
  /** cas on a missing key. */
  NOT_FOUND = 3,
}

/** One item as read. A miss is found=false with the other fields empty. */
struct Item {
  1: string key,
  2: bool found,
  /** The value; decompressed unless the read asked for raw bytes. */
  3: binary value,
  /** The raw 32-bit memcached flags as stored (0..2^32-1). */
  4: i64 flags,
  /** The PHP type taken from the flags. */
  5: ValueType type,
  /** pecl's OPT_USER_FLAGS bits (16-31 of the flags), 0..65535. */
  6: i32 user_flags,
  /** The cas token, for `cas`. Always fetched. */
  7: i64 cas,
}

/** Where a call goes. Every field is optional; the defaults are the config's. */
struct Target {
  /** A named pool from the config; default "default". */
  1: optional string pool,
  /** Choose the server by this key instead of the item key (pecl's *ByKey methods). */
  2: optional string server_key,
  /** A namespace (issue "cache beyond"): keys are versioned under it and invalidated at once. */
  3: optional string ns,
}

/** Options for reads. */
struct ReadOptions {
  1: optional Target target,
  /** Return compressed PHP items decompressed (default true); false returns the stored bytes. */
  2: optional bool decompress = true,
}

/** Options for writes. */
struct WriteOptions {
  1: optional Target target,
  /**
   * Expiry in seconds as memcached reads it: 0 never expires, up to 30 days relative,
   * above that a Unix time.
   */
  2: optional i32 ttl = 0,
  /** The PHP type the value bytes encode; checked (a LONG must be decimal text). */
  3: optional ValueType type = ValueType.STRING,
  /** pecl's user flags, 0..65535. */
  4: optional i32 user_flags = 0,
  /** Compress above the pool's threshold the way PHP does; default from the pool config. */
  5: optional bool compress,
}

/** One entry of a multi-store. */
struct Entry {
  1: string key,
  2: binary value,
  3: optional ValueType type = ValueType.STRING,
  4: optional i32 user_flags = 0,
}

/** Options for counters. */
struct CounterOptions {
  1: optional Target target,
  /** Create a missing counter with this value (the delta is not applied on creation). */
  2: optional i64 initial,
  /** Expiry of a counter created with `initial`, in seconds. */
  3: optional i32 ttl = 0,
}

/** A counter after the operation; found=false when it was missing and no initial was given. */
struct Counter {
  1: bool found,
  /** The value (memcached counters are unsigned 64-bit; values above 2^63-1 wrap here). */
  2: i64 value,
}

/** A memcached server of a pool. */
struct Server {
  1: string host,
  2: i32 port,
  3: i32 weight,
}

/** Where a Gearman function computes a missing value for get_or_compute. */
struct Loader {
  /** The Gearman function name. */
  1: string name,
  /** The workload sent to it; the key when empty. */
  2: optional binary workload,
  /** How long the computed value lives, in seconds. */
  3: optional i32 ttl = 0,
}

/** The answer of rate_limit. */
struct RateLimit {
  1: bool allowed,
  /** Attempts counted in the current window, this one included. */
  2: i64 count,
  /** Milliseconds until the window resets. */
  3: i64 reset_ms,
}

service Cache extends base.Base {
  /** Reads one item. A miss is Item.found=false, not an error. */
  Item get(1: string key, 2: ReadOptions opts) throws (1: common.ServiceError err),

  /**
   * Reads many keys in one call; the per-server requests go out in parallel. With
   * preserve_order the result lists every key in request order, misses as found=false;
   * without it only hits are listed.
   */
  list<Item> get_multi(1: list<string> keys, 2: ReadOptions opts, 3: bool preserve_order)
    throws (1: common.ServiceError err),

  /** Reads one item and sets its expiry to ttl seconds. */
  Item get_and_touch(1: string key, 2: i32 ttl, 3: ReadOptions opts)
    throws (1: common.ServiceError err),

  /** Stores unconditionally (memcached `set`; `set` is a Thrift keyword). */
  StoreResult put(1: string key, 2: binary value, 3: WriteOptions opts)
    throws (1: common.ServiceError err),
  /** Stores only if the key does not exist. */
  StoreResult add(1: string key, 2: binary value, 3: WriteOptions opts)
    throws (1: common.ServiceError err),
  /** Stores only if the key exists. */
  StoreResult replace(1: string key, 2: binary value, 3: WriteOptions opts)
    throws (1: common.ServiceError err),
  /** Appends bytes to an existing value (no expiry change; refused on compressed items). */
  StoreResult append(1: string key, 2: binary value, 3: Target target)
    throws (1: common.ServiceError err),
  /** Prepends bytes to an existing value. */
  StoreResult prepend(1: string key, 2: binary value, 3: Target target)
    throws (1: common.ServiceError err),
  /** Stores only if the item's cas token is still `cas`: STORED, EXISTS or NOT_FOUND. */
  StoreResult cas(1: string key, 2: binary value, 3: i64 cas, 4: WriteOptions opts)
    throws (1: common.ServiceError err),
  /** Stores many entries with one ttl; the result has one StoreResult per key. */
  map<string, StoreResult> put_multi(1: list<Entry> entries, 2: WriteOptions opts)
    throws (1: common.ServiceError err),

  /** Sets a new expiry; false when the key does not exist. */
  bool touch(1: string key, 2: i32 ttl, 3: Target target) throws (1: common.ServiceError err),
  /** Deletes a key (`delete` is a Thrift keyword); false when it did not exist. */
  bool remove(1: string key, 2: Target target) throws (1: common.ServiceError err),
  /** Deletes many keys; per key, whether it existed. */
  map<string, bool> remove_multi(1: list<string> keys, 2: Target target)
    throws (1: common.ServiceError err),

  /** Adds delta to a counter; creates it when opts.initial is set. */
  Counter increment(1: string key, 2: i64 delta, 3: CounterOptions opts)
    throws (1: common.ServiceError err),
  /** Subtracts delta from a counter, clamping at 0 as memcached does. */
  Counter decrement(1: string key, 2: i64 delta, 3: CounterOptions opts)
    throws (1: common.ServiceError err),

  /**
   * Fire-and-forget store. Buffered per connection and sent as one pipelined batch when the
   * buffer is full, after a few milliseconds, or before any other call on the same connection
   * is served. Failures are counted and logged; oneway calls cannot return an error.
   */
  oneway void put_async(1: string key, 2: binary value, 3: WriteOptions opts),
  /** Fire-and-forget delete, buffered like put_async. */
  oneway void remove_async(1: string key, 2: Target target),

  /** Which server of the pool owns the key (or target.server_key). */
  Server server_for_key(1: string key, 2: Target target) throws (1: common.ServiceError err),
  /** The servers of a pool. */
  list<Server> servers(1: string pool) throws (1: common.ServiceError err),
  /** `stats <group>` of every server of a pool ("" for general stats), keyed by "host:port". */
  map<string, map<string, string>> stats(1: string group, 2: string pool)
    throws (1: common.ServiceError err),
  /** The memcached version of every server of a pool, keyed by "host:port". */
  map<string, string> versions(1: string pool) throws (1: common.ServiceError err),
  /** flush_all on every server of a pool after delay seconds. An admin method. */
  void flush(1: i32 delay, 2: string pool) throws (1: common.ServiceError err),

  /**
   * Read-through with stampede protection: on a miss exactly one caller in the cluster runs
   * the loader through the jobs service; the others wait up to their deadline for its value
   * (or get a stale one). The loader's failure is ServiceError(502) naming the job's outcome.
   */
  Item get_or_compute(1: string key, 2: Loader loader, 3: ReadOptions opts)
    throws (1: common.ServiceError err),
  /**
   * Marks an item stale instead of deleting it (stale-while-revalidate): get_or_compute
   * callers keep getting the old value while exactly one of them recomputes it. Meant for
   * keys served by get_or_compute. False when the key did not exist.
   */
  bool invalidate(1: string key, 2: Target target) throws (1: common.ServiceError err),
  /** Invalidates every key under a namespace at once (the namespace's version moves on). */
  void invalidate_namespace(1: string ns, 2: string pool) throws (1: common.ServiceError err),
  /** Counts one attempt for key in a fixed window of window_ms; allowed while count <= limit. */
  RateLimit rate_limit(1: string key, 2: i64 limit, 3: i64 window_ms, 4: Target target)
    throws (1: common.ServiceError err),
}
