<?php
// A PHP pecl/memcached peer for the cache tests: reads one JSON request on stdin, prints JSON.
//
// Request: {"servers": [["127.0.0.1", 17201, 1], ...], "options": {"distribution": "ketama" |
// "consistent" | "modula", "prefix": "", "hash_with_prefix": false, "compression": false,
// "compression_type": "fastlz" | "zlib", "user_flags": -1}, "op": ..., ...}
// Ops:
//   server_by_key {"keys": [...]}             -> {"servers": ["host:port", ...]}
//   set           {"items": {k: v}}            -> {"ok": {k: bool}}  (v typed via JSON: string,
//                                                int, float, bool, null, array)
//   set_typed     {"items": [[k, type, text]]} -> {"ok": {...}}  type: string|long|double|bool|
//                                                array_json (array decoded from JSON)|null
//   get           {"keys": [...]}              -> {"values": {k: {"found": bool, "type": php
//                                                type, "repr": var_export}}}
//   get_multi     {"keys": [...]}              -> {"keys": [...], "values": {...}} (preserve order)
$req = json_decode(stream_get_contents(STDIN), true);
$o = $req["options"] ?? [];
$m = new Memcached();
$dist = $o["distribution"] ?? "ketama";
if ($dist === "ketama") {
    $m->setOption(Memcached::OPT_LIBKETAMA_COMPATIBLE, true);
} elseif ($dist === "consistent") {
    $m->setOption(Memcached::OPT_DISTRIBUTION, Memcached::DISTRIBUTION_CONSISTENT);
} else {
    $m->setOption(Memcached::OPT_DISTRIBUTION, Memcached::DISTRIBUTION_MODULA);
}
if (($o["prefix"] ?? "") !== "") {
    $m->setOption(Memcached::OPT_PREFIX_KEY, $o["prefix"]);
}
if ($o["hash_with_prefix"] ?? false) {
    $m->setOption(Memcached::OPT_HASH_WITH_PREFIX_KEY, true);
}
$m->setOption(Memcached::OPT_COMPRESSION, (bool)($o["compression"] ?? false));
if (($o["compression_type"] ?? "fastlz") === "zlib") {
    $m->setOption(Memcached::OPT_COMPRESSION_TYPE, Memcached::COMPRESSION_ZLIB);
} else {
    $m->setOption(Memcached::OPT_COMPRESSION_TYPE, Memcached::COMPRESSION_FASTLZ);
}
if (isset($o["user_flags"]) && $o["user_flags"] >= 0) {
    $m->setOption(Memcached::OPT_USER_FLAGS, $o["user_flags"]);
}
foreach ($req["servers"] as $s) {
    $m->addServer($s[0], $s[1], $s[2] ?? 0);
}
function describe($v) {
    return ["found" => true, "type" => gettype($v), "repr" => var_export($v, true)];
}
$out = [];
switch ($req["op"]) {
case "server_by_key":
    $out["servers"] = [];
    foreach ($req["keys"] as $k) {
        $s = $m->getServerByKey($k);
        $out["servers"][] = $s["host"] . ":" . $s["port"];
    }
    break;
case "set":
    foreach ($req["items"] as $k => $v) {
        $out["ok"][$k] = $m->set((string)$k, $v);
    }
    break;
case "set_typed":
    foreach ($req["items"] as [$k, $type, $text]) {
        switch ($type) {
        case "long": $v = (int)$text; break;
        case "double": $v = (float)$text; break;
        case "bool": $v = (bool)$text; break;
        case "null": $v = null; break;
        case "array_json": $v = json_decode($text, true); break;
        default: $v = $text;
        }
        $out["ok"][$k] = $m->set($k, $v);
        if (!$out["ok"][$k]) {
            $out["errors"][$k] = $m->getResultMessage();
        }
    }
    break;
case "get":
    foreach ($req["keys"] as $k) {
        $v = $m->get($k);
        if ($m->getResultCode() === Memcached::RES_NOTFOUND) {
            $out["values"][$k] = ["found" => false];
        } elseif ($m->getResultCode() !== Memcached::RES_SUCCESS) {
            $out["values"][$k] = ["found" => false, "error" => $m->getResultMessage()];
        } else {
            $out["values"][$k] = describe($v);
        }
    }
    break;
case "get_multi":
    $r = $m->getMulti($req["keys"], Memcached::GET_PRESERVE_ORDER);
    $out["keys"] = array_map("strval", array_keys($r ?: []));
    $out["found"] = count(array_filter($r ?: [], fn($v) => $v !== null));
    break;
}
echo json_encode($out, JSON_INVALID_UTF8_SUBSTITUTE), "\n";
