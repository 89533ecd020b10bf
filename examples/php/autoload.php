<?php
// Autoloading for glammp's generated PHP stubs and Debian's php-thrift library.
//
// Debian installs the Thrift PHP library flat under /usr/lib/php (Thrift\Protocol\TBinaryProtocol
// is /usr/lib/php/Protocol/TBinaryProtocol.php) and ships no Composer autoloader; the stubs from
// `thrift --gen php` use the PSR-4 layout (Glammp\Cache\CacheClient is
// Glammp/Cache/CacheClient.php).
// With Composer and the packagist `apache/thrift` package instead, drop the Thrift\ entry.

function glammp_autoload(string $stubs, string $thriftLib = '/usr/lib/php'): void
{
    $roots = ['Thrift\\' => "$thriftLib/", 'Glammp\\' => "$stubs/Glammp/"];
    spl_autoload_register(function (string $class) use ($roots): void {
        foreach ($roots as $prefix => $dir) {
            if (strncmp($class, $prefix, strlen($prefix)) === 0) {
                $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
                if (is_file($file)) {
                    require $file;
                }
                return;
            }
        }
    });
}
