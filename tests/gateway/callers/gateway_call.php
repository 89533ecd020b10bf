<?php
// Calls through the gateway from PHP (Debian php-thrift).
// Usage: php gateway_call.php STUBS HOST PORT binary|compact [CAFILE CERTFILE KEYFILE]
// With the files the connection is TLS with a client certificate. Debian's php-thrift has
// no TSSLSocket, so TlsSocket below opens a TLS stream and hands it to TSocket's I/O.
$stubs = $argv[1];
$host = $argv[2];
$port = (int)$argv[3];
$codec = $argv[4];
$tls = array_slice($argv, 5);

spl_autoload_register(function (string $class) use ($stubs): void {
    foreach (['Thrift\\' => '/usr/lib/php/', 'Glammp\\' => "$stubs/Glammp/"] as $prefix => $dir) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});

use Thrift\Exception\TTransportException;
use Thrift\Protocol\TBinaryProtocol;
use Thrift\Protocol\TCompactProtocol;
use Thrift\Protocol\TMultiplexedProtocol;
use Thrift\Transport\TFramedTransport;
use Thrift\Transport\TSocket;

class TlsSocket extends TSocket
{
    private array $ssl;

    public function __construct(string $host, int $port, array $ssl)
    {
        parent::__construct($host, $port);
        $this->ssl = $ssl;
    }

    public function open()
    {
        $ctx = stream_context_create(['ssl' => $this->ssl]);
        $handle = stream_socket_client("tls://{$this->host_}:{$this->port_}", $errno, $errstr,
                                       10, STREAM_CLIENT_CONNECT, $ctx);
        if ($handle === false) {
            throw new TTransportException("TLS connect failed: $errstr ($errno)");
        }
        stream_set_timeout($handle, 10);
        $this->handle_ = $handle;
    }

    // TSocket::read waits with stream_select, which cannot see bytes already decrypted into
    // PHP's TLS buffer; a blocking fread with a stream timeout can.
    public function read($len)
    {
        $data = fread($this->handle_, $len);
        if ($data === false || ($data === '' && feof($this->handle_))) {
            throw new TTransportException('TLS read failed');
        }
        return $data;
    }
}

if ($tls) {
    $socket = new TlsSocket($host, $port, [
        'cafile' => $tls[0], 'local_cert' => $tls[1], 'local_pk' => $tls[2],
        'verify_peer' => true, 'peer_name' => 'localhost',
    ]);
} else {
    $socket = new TSocket($host, $port);
}
$socket->setSendTimeout(10000);
$socket->setRecvTimeout(10000);
$transport = new TFramedTransport($socket);
$transport->open();
$proto = $codec === 'compact' ? new TCompactProtocol($transport) : new TBinaryProtocol($transport);
$base = new \Glammp\Base\BaseClient(new TMultiplexedProtocol($proto, 'Base'));
echo 'name ', $base->getName(), "\n";
$cache = new \Glammp\Cache\CacheClient(new TMultiplexedProtocol($proto, 'Cache'));
echo 'get ', $cache->get('hello', new \Glammp\Cache\ReadOptions())->value, "\n";
try {
    $cache->get('bad key', new \Glammp\Cache\ReadOptions());
    echo "no error\n";
} catch (\Glammp\Common\ServiceError $e) {
    printf("ServiceError %d %s retryable=%s\n", $e->code, $e->origin, var_export($e->retryable, true));
}
try {
    $cache->flush(0, 'default');
    echo "flushed\n";
} catch (\Glammp\Common\ServiceError $e) {
    printf("ServiceError %d %s retryable=%s\n", $e->code, $e->origin, var_export($e->retryable, true));
}
$transport->close();
