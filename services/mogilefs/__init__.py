"""A MogileFS-compatible tracker and storage node (protocol of MogileFS 2.73).

Run them with `glammp mogilefsd`, `glammp mogstored` and `glammp mogile-dev` (or
`python -m services.mogilefs …`); from Python, `devcluster.DevCluster` starts a tracker and two
storage nodes for development and tests.

Modules, outside in:

* `tracker` (line server, admin lines, access rules) → `namespace` (file commands) and
  `catalog` (domains, classes, hosts, devices, settings) → `store` on `database` (SQLite or
  PostgreSQL); `wire` is the line protocol; `devices` and `policy` decide where files go.
* Workers inside the tracker: `monitor` (usage + test writes, dead-device reaper),
  `replication`, `deletion` (replicas, strays, abandoned uploads); `httpclient` is their HTTP.
* `storage`: the storage node's HTTP server and usage-file writer.
* `config` (typed specs), `cli` (subcommands), `client` (a small tracker client for tools).

This package imports nothing at import time, so `python -m services.mogilefs` can monkey-patch
gevent before anything opens a socket.
"""
