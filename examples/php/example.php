<?php
// Calling glammp from PHP: the cache, files and jobs over one multiplexed connection.
//
//   php example.php                    the tour (prints one line per step)
//   php example.php put-int KEY N      stores N as a PHP int (type LONG), as pecl/memcached would
//   php example.php fetch DOMAIN KEY   prints a stored file
//
// GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090); with
// GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
// by that CA and name the host (what a gateway with [gateway.tls] offers);
// GLAMMP_PHP_STUBS where `make stubs` put the generated code (default ../../build/stubs/php).
// The jobs part needs a worker serving `reverse`, e.g.
//   glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse

declare(strict_types=1);

require __DIR__ . '/autoload.php';
glammp_autoload(getenv('GLAMMP_PHP_STUBS') ?: __DIR__ . '/../../build/stubs/php');

use Glammp\Base\BaseClient;
use Glammp\Base\Status;
use Glammp\Cache\CacheClient;
use Glammp\Cache\ReadOptions;
use Glammp\Cache\StoreResult;
use Glammp\Cache\Target;
use Glammp\Cache\ValueType;
use Glammp\Cache\WriteOptions;
use Glammp\Common\ErrorCode;
use Glammp\Common\ServiceError;
use Glammp\Filestore\FetchOptions;
use Glammp\Filestore\FilestoreClient;
use Glammp\Filestore\StoreOptions;
use Glammp\Jobs\Job;
use Glammp\Jobs\JobsClient;
use Glammp\Jobs\JobStatus;
use Thrift\Protocol\TBinaryProtocol;
use Thrift\Protocol\TMultiplexedProtocol;
use Thrift\Transport\TFramedTransport;
use Thrift\Exception\TTransportException;
use Thrift\Transport\TSocket;

// php-thrift's TSocket defaults are 100 ms to send and 750 ms to receive: far too short for a
// server that may wait on a backend. The receive timeout must outlast the slowest call made on
// the connection (here a foreground job, which waits up to JOB_TIMEOUT_MS).
const SEND_TIMEOUT_MS = 5000;
const RECV_TIMEOUT_MS = 15000;
const JOB_TIMEOUT_MS = 10000;
const PREFIX = 'example:php:';

/**
 * TSocket over TLS: Debian's php-thrift has no TLS socket. PHP's TLS layer decrypts whole
 * records, so bytes can wait in its buffer while stream_select() sees nothing to read (the
 * plain TSocket then times out on the second read of a frame); reads here go straight to
 * fread(), bounded by the stream's own timeout.
 */
final class TlsSocket extends TSocket
{
    public function __construct(string $host, int $port, private string $caFile)
    {
        parent::__construct($host, $port);
    }

    public function open()
    {
        $context = stream_context_create(['ssl' => [
            'cafile' => $this->caFile,
            'verify_peer' => true,
            'verify_peer_name' => true,  // the certificate must name the host
            'peer_name' => $this->host_,
        ]]);
        // A failed handshake leaves $errstr empty: OpenSSL's reasons arrive as warnings.
        $warnings = [];
        set_error_handler(function (int $level, string $message) use (&$warnings): bool {
            $warnings[] = $message;
            return true;
        });
        try {
            $handle = stream_socket_client("tls://{$this->host_}:{$this->port_}", $errno,
                $errstr, $this->sendTimeoutSec_ + $this->sendTimeoutUsec_ / 1e6,
                STREAM_CLIENT_CONNECT, $context);
        } finally {
            restore_error_handler();
        }
        if ($handle === false) {
            throw new TTransportException("TLS connect to {$this->host_}:{$this->port_} failed: "
                . implode('; ', array_filter([$errstr, ...$warnings])),
                TTransportException::NOT_OPEN);
        }
        stream_set_timeout($handle, (int)$this->recvTimeoutSec_, (int)$this->recvTimeoutUsec_);
        $this->handle_ = $handle;
    }

    public function read($len)
    {
        $data = fread($this->handle_, $len);
        if ($data === false || $data === '') {
            if (stream_get_meta_data($this->handle_)['timed_out']) {
                throw new TTransportException("TLS: timed out reading $len bytes",
                    TTransportException::TIMED_OUT);
            }
            throw new TTransportException('TLS: the connection was closed',
                TTransportException::END_OF_FILE);
        }
        return $data;
    }
}

/** One framed binary connection; every service is multiplexed over it by name. */
final class Glammp
{
    public BaseClient $base;
    public CacheClient $cache;
    public FilestoreClient $files;
    public JobsClient $jobs;
    private TFramedTransport $transport;

    public function __construct(string $host, int $port, ?string $tlsCa = null)
    {
        $socket = $tlsCa ? new TlsSocket($host, $port, $tlsCa) : new TSocket($host, $port);
        $socket->setSendTimeout(SEND_TIMEOUT_MS);
        $socket->setRecvTimeout(RECV_TIMEOUT_MS);
        $this->transport = new TFramedTransport($socket);
        $this->transport->open();
        $protocol = new TBinaryProtocol($this->transport);
        $this->base = new BaseClient(new TMultiplexedProtocol($protocol, 'Base'));
        $this->cache = new CacheClient(new TMultiplexedProtocol($protocol, 'Cache'));
        $this->files = new FilestoreClient(new TMultiplexedProtocol($protocol, 'Filestore'));
        $this->jobs = new JobsClient(new TMultiplexedProtocol($protocol, 'Jobs'));
    }

    public function close(): void
    {
        $this->transport->close();
    }
}

/** "400 BAD_REQUEST retryable=false origin=cache: <message>" */
function describe(ServiceError $e): string
{
    return sprintf('%d %s retryable=%s origin=%s: %s', $e->code,
        ErrorCode::$__names[$e->code] ?? 'UNKNOWN', $e->retryable ? 'true' : 'false',
        $e->origin ?? '?', $e->message);
}

/**
 * Runs $call, again (up to $attempts times) while glammp says the error is retryable, waiting
 * what the error asks for. Only retryable errors are retried: a 400 or 404 will not get better.
 */
function with_retry(callable $call, int $attempts = 3)
{
    for ($i = 1; ; $i++) {
        try {
            return $call();
        } catch (ServiceError $e) {
            if (!$e->retryable || $i >= $attempts) {
                throw $e;
            }
            usleep(1000 * ($e->retry_after_ms ?: 100));
        }
    }
}

/** Prints why a step is skipped when the server does not implement it yet (501), else rethrows. */
function skip_if_not_implemented(string $step, ServiceError $e): void
{
    if ($e->code !== ErrorCode::NOT_IMPLEMENTED) {
        throw $e;
    }
    echo "$step skipped: ", describe($e), "\n";
}

/**
 * The cas retry loop: read the item with its cas token, compute the new value, store it only if
 * nobody changed the item in between, and start over when somebody did.
 * Returns [new value, attempts].
 */
function cas_update(CacheClient $cache, string $key, callable $change, int $maxAttempts = 10): array
{
    for ($attempt = 1; $attempt <= $maxAttempts; $attempt++) {
        $item = $cache->get($key, new ReadOptions());
        $value = $change($item->found ? $item->value : null);
        $result = $item->found
            ? $cache->cas($key, $value, $item->cas, new WriteOptions())
            : $cache->add($key, $value, new WriteOptions());
        if ($result === StoreResult::STORED) {
            return [$value, $attempt];
        }
        // EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
    }
    throw new RuntimeException("cas on $key lost $maxAttempts times in a row");
}

function cache_tour(CacheClient $cache): void
{
    $read = new ReadOptions();
    $result = $cache->put(PREFIX . 'greeting', 'hello from php', new WriteOptions(['ttl' => 300]));
    echo 'put ', StoreResult::$__names[$result], "\n";

    $item = with_retry(fn() => $cache->get(PREFIX . 'greeting', $read));
    printf("get found value=%s type=%s\n", $item->value, ValueType::$__names[$item->type]);

    $cache->put(PREFIX . 'a', '1', new WriteOptions());
    $cache->put(PREFIX . 'b', '2', new WriteOptions());
    $keys = [PREFIX . 'a', PREFIX . 'b', PREFIX . 'missing'];
    $items = $cache->get_multi($keys, $read, true);  // preserve_order: misses listed as found=false
    $hits = count(array_filter($items, fn($i) => $i->found));
    printf("get_multi hits=%d misses=%d\n", $hits, count($items) - $hits);

    // Delayed multi-get, as pecl/memcached's getDelayed/fetchAll: send the request, do other
    // work while the server gathers the keys, then read the answer.
    $cache->send_get_multi([PREFIX . 'a', PREFIX . 'b'], $read, false);
    // ... render the rest of the page here ...
    $items = $cache->recv_get_multi();
    printf("delayed get_multi hits=%d\n", count($items));

    // A concurrent writer is simulated inside the change function: it changes the counter
    // between our read and our cas, so the first cas answers EXISTS and the loop runs again.
    $cache->put(PREFIX . 'counter', '0', new WriteOptions());
    $interfered = false;
    [$value, $attempts] = cas_update($cache, PREFIX . 'counter',
        function (?string $old) use ($cache, &$interfered): string {
            if (!$interfered) {
                $interfered = true;
                $cache->put(PREFIX . 'counter', '100', new WriteOptions());
            }
            return (string)((int)$old + 1);
        });
    echo "cas counter=$value attempts=$attempts\n";

    // Namespaces: every key written under a namespace goes away with one call.
    try {
        $ns = new Target(['ns' => 'example-php']);
        $cache->put('profile:1', 'cached page', new WriteOptions(['target' => $ns]));
        $before = $cache->get('profile:1', new ReadOptions(['target' => $ns]))->found;
        $cache->invalidate_namespace('example-php', 'default');
        $after = $cache->get('profile:1', new ReadOptions(['target' => $ns]))->found;
        printf("namespace invalidated before=%s after=%s\n", $before ? 'hit' : 'miss',
            $after ? 'hit' : 'miss');
    } catch (ServiceError $e) {
        skip_if_not_implemented('namespace', $e);
    }

    // A key with a space is not a memcached key: the cache answers ServiceError 400.
    try {
        $cache->get('bad key', $read);
        echo "error none\n";
    } catch (ServiceError $e) {
        echo 'error ', describe($e), "\n";
    }
}

function file_tour(FilestoreClient $files): void
{
    // The domain is made by an administrator (the dev cluster of `glammp serve` makes
    // "glammp"); create_domain is an admin method that the gateway refuses to frontends.
    $domain = getenv('GLAMMP_DOMAIN') ?: 'glammp';
    $content = "a file stored from PHP\n";
    try {
        $info = $files->store($domain, 'php/hello.txt', $content, new StoreOptions());
        echo "file stored {$info->length} bytes\n";
        $data = $files->fetch($domain, 'php/hello.txt', new FetchOptions());
        printf("file fetched %d bytes same=%s\n", strlen($data),
            $data === $content ? 'true' : 'false');
    } catch (ServiceError $e) {
        skip_if_not_implemented('file', $e);
    }
}

function job_tour(JobsClient $jobs): void
{
    try {
        $result = $jobs->submit(new Job(['name' => 'reverse', 'workload' => 'glammp-php',
                                         'timeout_ms' => JOB_TIMEOUT_MS]));
        printf("job submit %s data=%s\n", JobStatus::$__names[$result->status], $result->data);

        $submitted = $jobs->submit_background(new Job(['name' => 'reverse',
                                                       'workload' => 'background-php']));
        // Poll until gearmand no longer knows the job (it finished), with a bounded wait.
        for ($i = 0; $i < 200 && $jobs->status($submitted->handle)->known; $i++) {
            usleep(50000);
        }
        try {
            $done = $jobs->fetch_result($submitted->handle);
            printf("job background %s data=%s\n", JobStatus::$__names[$done->status], $done->data);
        } catch (ServiceError $e) {
            if ($e->code !== ErrorCode::NOT_FOUND) {
                throw $e;
            }
            echo "job background finished (no stored result: ", describe($e), ")\n";
        }
    } catch (ServiceError $e) {
        skip_if_not_implemented('job', $e);
    }
}

$glammp = new Glammp(getenv('GLAMMP_HOST') ?: '127.0.0.1', (int)(getenv('GLAMMP_PORT') ?: 9090),
                    getenv('GLAMMP_TLS_CA') ?: null);
try {
    $command = $argv[1] ?? 'tour';
    if ($command === 'put-int') {
        $result = $glammp->cache->put($argv[2], (string)(int)$argv[3],
                                      new WriteOptions(['type' => ValueType::LONG]));
        echo 'put ', StoreResult::$__names[$result], "\n";
    } elseif ($command === 'fetch') {
        echo 'fetched ', $glammp->files->fetch($argv[2], $argv[3], new FetchOptions()), "\n";
    } else {
        echo 'status ', Status::$__names[$glammp->base->getStatus()], "\n";
        cache_tour($glammp->cache);
        file_tour($glammp->files);
        job_tour($glammp->jobs);
    }
} catch (ServiceError $e) {
    fwrite(STDERR, 'ServiceError ' . describe($e) . "\n");
    exit(2);
} finally {
    $glammp->close();
}
