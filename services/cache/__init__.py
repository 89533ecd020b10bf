"""The cache service and its memcached client: libmemcached-compatible ring (`ring`), pecl
value encoding (`codec`, `fastlz`), gevent-native protocol, pool and client (`protocol`,
`server`, `client`), oneway write buffering (`oneway`), the Thrift handler (`service`) and its
config (`config`), a local memcached for `glammp serve` and tests (`local`), and what goes
beyond pecl: the stored item format (`items`) with large values split into chunks
(`largevalue`) and an in-process L1 (`hotcache`), namespaces (`namespace`), rate limits
(`ratelimit`), read-through with stampede protection (`readthrough`) and routes between pools
(`routes`: replicas, gutter and warm-up)."""
