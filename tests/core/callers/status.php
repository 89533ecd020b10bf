<?php
// Calls a glammp port from PHP (Debian php-thrift): base status multiplexed and not, then a
// Cache call that fails, to show the ServiceError fields arriving intact.
// Usage: php status.php STUBS_DIR HOST PORT
[$_, $stubs, $host, $port] = $argv;

spl_autoload_register(function (string $class) use ($stubs): void {
    // Debian installs the Thrift PHP library flat under /usr/lib/php (no Thrift/ level).
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

use Thrift\Protocol\TBinaryProtocol;
use Thrift\Protocol\TMultiplexedProtocol;
use Thrift\Transport\TFramedTransport;
use Thrift\Transport\TSocket;

function open_protocol(string $host, int $port): array {
    $socket = new TSocket($host, $port);
    $socket->setSendTimeout(5000);  // the defaults (100 ms / 750 ms) are too short for a server
    $socket->setRecvTimeout(5000);
    $transport = new TFramedTransport($socket);
    $transport->open();
    return [$transport, new TBinaryProtocol($transport)];
}

[$t, $proto] = open_protocol($host, (int)$port);
$base = new \Glammp\Base\BaseClient(new TMultiplexedProtocol($proto, 'Base'));
echo 'multiplexed ', \Glammp\Base\Status::$__names[$base->getStatus()], "\n";
$cache = new \Glammp\Cache\CacheClient(new TMultiplexedProtocol($proto, 'Cache'));
try {
    $cache->get('missing', new \Glammp\Cache\ReadOptions());
    echo "no error\n";
} catch (\Glammp\Common\ServiceError $e) {
    printf("ServiceError %d %s retryable=%s %s\n", $e->code, $e->origin,
           var_export($e->retryable, true), $e->details['key'] ?? '');
}
$t->close();

[$t, $proto] = open_protocol($host, (int)$port);
$plain = new \Glammp\Base\BaseClient($proto);
echo 'plain ', \Glammp\Base\Status::$__names[$plain->getStatus()], "\n";
$t->close();
