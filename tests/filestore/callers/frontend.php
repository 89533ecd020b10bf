<?php
// A PHP frontend's flow: store a file through the Filestore Thrift stub, ask for its paths,
// and fetch one over HTTP with plain PHP, as a page serving images would.
// Usage: php frontend.php STUBS_DIR HOST PORT KEY
[$_, $stubs, $host, $port, $key] = $argv;

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

use Glammp\Filestore\FetchOptions;
use Glammp\Filestore\FilestoreClient;
use Glammp\Filestore\PathOptions;
use Glammp\Filestore\StoreOptions;
use Thrift\Protocol\TBinaryProtocol;
use Thrift\Protocol\TMultiplexedProtocol;
use Thrift\Transport\TFramedTransport;
use Thrift\Transport\TSocket;

$socket = new TSocket($host, (int)$port);
$socket->setSendTimeout(10000);
$socket->setRecvTimeout(10000);
$transport = new TFramedTransport($socket);
$transport->open();
$files = new FilestoreClient(new TMultiplexedProtocol(new TBinaryProtocol($transport), 'Filestore'));

$body = random_bytes(3000) . "end of image";
$info = $files->store('glammp', $key, $body, new StoreOptions(['storage_class' => 'md5']));
printf("stored fid=%d length=%d checksum_ok=%s\n", $info->fid, $info->length,
       var_export($info->checksum === 'MD5:' . md5($body), true));

$paths = $files->get_paths('glammp', $key, new PathOptions(['noverify' => false]));
$fetched = file_get_contents($paths[0]);
echo 'http ', $fetched === $body ? 'same' : 'DIFFERENT', "\n";
$verified = $files->fetch('glammp', $key, new FetchOptions(['verify' => true]));
echo 'thrift ', $verified === $body ? 'same' : 'DIFFERENT', "\n";

try {
    $files->info('glammp', $key . '-missing');
    echo "no error\n";
} catch (\Glammp\Common\ServiceError $e) {
    printf("ServiceError %d %s\n", $e->code, $e->details['tracker_error'] ?? '');
}
$transport->close();
