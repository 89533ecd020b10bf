/**
 * The filestore service: files in MogileFS (real trackers or glammp's compatible one).
 *
 * Files live under (domain, key) with a storage class that sets how many copies MogileFS
 * keeps. Small files go in one call; larger ones through an upload session (begin, append
 * chunks, finish) so that no frame and no server holds a whole large file.
 * Errors: unknown key 404, no writable device 507, tracker unreachable 503 (retryable),
 * storage node failure 502, invalid domain or key 400.
 */
include "common.thrift"
include "base.thrift"

namespace py glammp.filestore
namespace php Glammp.Filestore
namespace java org.glammp.filestore
namespace js Glammp.Filestore
namespace go glammp.filestore
namespace rb Glammp.Filestore
namespace perl Glammp.Filestore

/** What MogileFS knows about a stored file. */
struct FileInfo {
  1: string domain,
  2: string key,
  3: i64 fid,
  /** Size in bytes. */
  4: i64 length,
  /** The storage class (`class` is a Thrift keyword). */
  5: string storage_class,
  /** How many copies the tracker counts (may lag while replication runs). */
  6: i32 copies,
  /** "MD5:<hex>" when known, else empty. */
  7: string checksum,
  /** Devices holding a copy. */
  8: list<i32> devids,
}

/** Options for storing. */
struct StoreOptions {
  /** The storage class; the domain's default class when absent. */
  1: optional string storage_class,
  /** "MD5:<hex>" of the content; verified by the tracker when given. */
  2: optional string checksum,
}

/** Options for reading. */
struct FetchOptions {
  /** Check the content against the stored checksum (costs a full read). */
  1: optional bool verify = false,
}

/** Options for get_paths, as MogileFS's. */
struct PathOptions {
  /** Skip the tracker's check of the first path (faster; may return a dead path). */
  1: optional bool noverify = false,
  /** At most this many paths (MogileFS's default 2). */
  2: optional i32 pathcount = 2,
  /** "alt" for the hosts' alternate addresses. */
  3: optional string zone,
}

/** One page of a key listing. The end is an empty page, not an error. */
struct KeyPage {
  1: list<string> keys,
  /** Pass as `after` to get the next page; empty at the end. */
  2: string next_after,
}

/** A storage class of a domain. */
struct StorageClass {
  1: string name,
  /** How many copies to keep. */
  2: i32 mindevcount,
  /** "MultipleHosts()", "MultipleHosts(3)", "MultipleDevices()". */
  3: optional string replpolicy,
  /** "NONE", "MD5" or "SHA-1". */
  4: optional string hashtype,
}

/** A domain and its classes. */
struct Domain {
  1: string name,
  2: list<StorageClass> classes,
}

/** An upload session. */
struct Upload {
  1: string upload_id,
  /** The largest chunk append_chunk accepts, in bytes. */
  2: i64 max_chunk,
}

service Filestore extends base.Base {
  /** Stores a small file in one call (at most one frame); overwrites an existing key. */
  FileInfo store(1: string domain, 2: string key, 3: binary data, 4: StoreOptions opts)
    throws (1: common.ServiceError err),
  /** Starts a chunked upload of a file of any size. */
  Upload begin_upload(1: string domain, 2: string key, 3: StoreOptions opts)
    throws (1: common.ServiceError err),
  /**
   * Appends a chunk at `offset` (which must equal the bytes received so far; a repeated chunk
   * at an old offset is acknowledged without writing it again). Returns the bytes received.
   */
  i64 append_chunk(1: string upload_id, 2: i64 offset, 3: binary data)
    throws (1: common.ServiceError err),
  /** Completes an upload; the MD5 is computed while streaming and verified by the tracker. */
  FileInfo finish_upload(1: string upload_id, 2: StoreOptions opts)
    throws (1: common.ServiceError err),
  /** Abandons an upload; nothing becomes visible. */
  void abort_upload(1: string upload_id) throws (1: common.ServiceError err),

  /** Reads a whole small file (413 when larger than one frame: use fetch_range). */
  binary fetch(1: string domain, 2: string key, 3: FetchOptions opts)
    throws (1: common.ServiceError err),
  /** Reads `length` bytes at `offset` (fewer at the end of the file). */
  binary fetch_range(1: string domain, 2: string key, 3: i64 offset, 4: i64 length)
    throws (1: common.ServiceError err),
  /** URLs of the file's copies, for frontends that serve or reproxy them directly. */
  list<string> get_paths(1: string domain, 2: string key, 3: PathOptions opts)
    throws (1: common.ServiceError err),

  /** Deletes a file; 404 when it does not exist. */
  void remove(1: string domain, 2: string key) throws (1: common.ServiceError err),
  /** Renames a file; 409 when to_key exists. */
  void rename(1: string domain, 2: string from_key, 3: string to_key)
    throws (1: common.ServiceError err),
  bool exists(1: string domain, 2: string key) throws (1: common.ServiceError err),
  FileInfo info(1: string domain, 2: string key) throws (1: common.ServiceError err),
  /** Moves a file to another storage class (the tracker re-replicates to the new policy). */
  void change_class(1: string domain, 2: string key, 3: string storage_class)
    throws (1: common.ServiceError err),
  /** Keys in binary order, after `after` (exclusive), starting with `prefix`, at most `limit` (<= 1000). */
  KeyPage list_keys(1: string domain, 2: string prefix, 3: string after, 4: i32 limit)
    throws (1: common.ServiceError err),

  /** Every domain with its classes. */
  list<Domain> domains() throws (1: common.ServiceError err),
  /** Admin. */
  void create_domain(1: string domain) throws (1: common.ServiceError err),
  /** Admin; 409 when the domain still has files or classes. */
  void delete_domain(1: string domain) throws (1: common.ServiceError err),
  /** Admin. */
  void create_class(1: string domain, 2: StorageClass cls) throws (1: common.ServiceError err),
  /** Admin. */
  void update_class(1: string domain, 2: StorageClass cls) throws (1: common.ServiceError err),
  /** Admin; 409 when the class still has files. */
  void delete_class(1: string domain, 2: string name) throws (1: common.ServiceError err),
}
