<?php
// A pecl/gearman client for the interop tests: php php_client.php HOST PORT FUNCTION WORKLOAD
// Queues one background job and prints its handle.
[$_, $host, $port, $fn, $data] = $argv;
$c = new GearmanClient();
$c->addServer($host, (int)$port);
$handle = $c->doBackground($fn, $data);
if ($c->returnCode() != GEARMAN_SUCCESS) {
    fwrite(STDERR, "doBackground failed: " . $c->error() . "\n");
    exit(1);
}
echo $handle, "\n";
