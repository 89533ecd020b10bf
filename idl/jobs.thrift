/**
 * The jobs service: Gearman work from any Thrift language, with pecl/gearman's capabilities
 * (doNormal/doHigh/doLow, doBackground*, jobStatus, addTask + runTasks) and more.
 *
 * A job that ran and failed is a JobResult with status FAILED or EXCEPTION, not an error.
 * ServiceError means the call itself did not do what was asked: 503 when no gearmand could take
 * the job, JOB_OUTCOME_UNKNOWN (1001) when the connection dropped after the job was submitted.
 */
include "common.thrift"
include "base.thrift"

namespace py glammp.jobs
namespace php Glammp.Jobs
namespace java org.glammp.jobs
namespace js Glammp.Jobs
namespace go glammp.jobs
namespace rb Glammp.Jobs
namespace perl Glammp.Jobs

enum Priority {
  NORMAL = 0,
  HIGH = 1,
  LOW = 2,
}

/** How a foreground job ended. */
enum JobStatus {
  /** WORK_COMPLETE: `data` is the result. */
  COMPLETE = 0,
  /** WORK_FAIL. */
  FAILED = 1,
  /** WORK_EXCEPTION: `exception_text` has the worker's text. */
  EXCEPTION = 2,
  /** The job's deadline passed first; the job itself may still run to its end. */
  TIMEOUT = 3,
}

/** A job to submit. */
struct Job {
  /** The Gearman function name (`function` is a Thrift keyword). */
  1: string name,
  /** The workload, binary-safe. */
  2: binary workload,
  /**
   * The unique id: jobs with the same (name, unique) in flight on a gearmand are coalesced
   * into one run. Generated (a UUID) when absent; hashed when longer than 64 bytes.
   */
  3: optional string unique,
  4: optional Priority priority = Priority.NORMAL,
  /** For foreground jobs: how long to wait for the outcome, in ms. A deadline, not an idle timer. */
  5: optional i32 timeout_ms,
}

/** The outcome of a foreground job. */
struct JobResult {
  1: JobStatus status,
  /** The WORK_COMPLETE data (the whole result). */
  2: binary data,
  /** WORK_DATA chunks, in order, as the worker streamed them. */
  3: list<binary> chunks,
  /** WORK_WARNING texts, in order. */
  4: list<binary> warnings,
  /** The last WORK_STATUS numerator and denominator (0 when none was sent). */
  5: i64 numerator,
  6: i64 denominator,
  /** The WORK_EXCEPTION text when status is EXCEPTION. */
  7: binary exception_text,
  /** The gearmand job handle. */
  8: string handle,
}

/** What a gearmand knows about a job (GET_STATUS / GET_STATUS_UNIQUE). */
struct JobState {
  /** The job is queued or running. False once it has finished or was never known. */
  1: bool known,
  2: bool running,
  3: i64 numerator,
  4: i64 denominator,
  /** Clients waiting on the job (only known for status by unique). */
  5: optional i32 waiting_clients,
}

/** A job submitted in the background. */
struct Submitted {
  /** The gearmand job handle, for status(). */
  1: string handle,
  /** The unique id used (generated when the caller gave none). */
  2: string unique,
}

/** A job kept by the service's schedule until it is due. */
struct Scheduled {
  /** The schedule entry's id, for cancel_scheduled(). */
  1: string id,
  /** When it is due, in ms since the Unix epoch. */
  2: i64 run_at_ms,
  3: string unique,
}

/** One function as the gearmand servers see it, summed across servers. */
struct FunctionStatus {
  1: string name,
  /** Jobs queued or running (gearmand's "total"). */
  2: i64 total,
  3: i64 running,
  /** Connected workers that can do it. */
  4: i64 workers,
  /** Queued jobs by priority (gearmand's prioritystatus). */
  5: i64 queued_high,
  6: i64 queued_normal,
  7: i64 queued_low,
}

/** One connection of a gearmand's `workers` list. */
struct WorkerInfo {
  /** The gearmand it is connected to, "host:port". */
  1: string server,
  2: string ip,
  3: string client_id,
  4: list<string> functions,
}

service Jobs extends base.Base {
  /** Runs a job and waits for its outcome (doNormal/doHigh/doLow). */
  JobResult submit(1: Job job) throws (1: common.ServiceError err),
  /**
   * Runs many jobs in parallel and waits for all (addTask + runTasks); one result per job, in
   * order. A job that could not be submitted yields an error for the whole batch only if none
   * was submitted; otherwise its result is FAILED with the reason in `exception_text`.
   */
  list<JobResult> submit_batch(1: list<Job> jobs) throws (1: common.ServiceError err),
  /** Queues a job and returns at once (doBackground*). Durable when gearmand has a queue. */
  Submitted submit_background(1: Job job) throws (1: common.ServiceError err),
  /** Keeps a job in the service's durable schedule and submits it in the background when due. */
  Scheduled schedule(1: Job job, 2: i64 run_at_ms) throws (1: common.ServiceError err),
  /** Removes a scheduled job that has not been submitted yet; false if it was not there. */
  bool cancel_scheduled(1: string id) throws (1: common.ServiceError err),
  /** Status by job handle (jobStatus). */
  JobState status(1: string handle) throws (1: common.ServiceError err),
  /** Status by unique id (jobStatusByUniqueKey). */
  JobState status_by_unique(1: string unique) throws (1: common.ServiceError err),
  /**
   * The result of a finished background job run by a glammp worker, if the service keeps
   * results; 404 when unknown or expired.
   */
  JobResult fetch_result(1: string handle) throws (1: common.ServiceError err),
  /** Per-function queue, running and worker counts across all configured gearmand servers. */
  list<FunctionStatus> functions() throws (1: common.ServiceError err),
  /** The workers connected to every configured gearmand. */
  list<WorkerInfo> workers() throws (1: common.ServiceError err),
  /** Cancels a queued job by handle (gearmand `cancel job`). An admin method. */
  bool cancel(1: string handle) throws (1: common.ServiceError err),
}
