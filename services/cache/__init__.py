"""The cache service and its memcached client: libmemcached-compatible ring (`ring`), pecl
value encoding (`codec`, `fastlz`), gevent-native protocol, pool and client (`protocol`,
`server`, `client`), oneway write buffering (`oneway`), the Thrift handler (`service`) and a
local memcached for `glammp serve` and tests (`local`)."""
