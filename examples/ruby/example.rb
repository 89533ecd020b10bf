# Calling glammp from Ruby: the cache, files and jobs over one multiplexed connection.
#
#   ruby example.rb                 the tour (prints one line per step)
#   ruby example.rb result HANDLE   waits for a background job and prints its stored result
#
# GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090); with
# GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
# by that CA and name the host (what a gateway with [gateway.tls] offers);
# GLAMMP_RB_STUBS where `make stubs` put the generated code (default ../../build/stubs/rb).
# The jobs part needs a worker serving `reverse`, e.g.
#   glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse

$LOAD_PATH.unshift(ENV['GLAMMP_RB_STUBS'] || File.expand_path('../../build/stubs/rb', __dir__))
require 'openssl'
require 'thrift'
require 'base'
require 'cache'
require 'filestore'
require 'jobs'

# Seconds; the socket timeout must outlast the slowest call, here a foreground job.
SOCKET_TIMEOUT = 15
JOB_TIMEOUT_MS = 10_000
PREFIX = 'example:ruby:'.freeze

ServiceError = Glammp::Common::ServiceError
ErrorCode = Glammp::Common::ErrorCode

# ruby-thrift 0.14 waits in IO.select before every read, which cannot see bytes OpenSSL has
# already decrypted and buffered: the read of a frame's body after its 4-byte size then times
# out. Bytes OpenSSL holds are handed out first.
class Glammp::SSLSocket < Thrift::SSLSocket
  def read(size)
    return @handle.readpartial(size) if open? && @handle.pending.positive?

    super
  end
end

# One framed binary connection; every service is multiplexed over it by name.
class Glammp::Connection
  attr_reader :base, :cache, :files, :jobs

  def initialize(host, port, tls_ca = nil)
    socket = if tls_ca
               # Thrift::SSLSocket checks that the certificate names the host once connected.
               tls = OpenSSL::SSL::SSLContext.new
               tls.set_params(ca_file: tls_ca, verify_mode: OpenSSL::SSL::VERIFY_PEER)
               Glammp::SSLSocket.new(host, port, SOCKET_TIMEOUT, tls)
             else
               Thrift::Socket.new(host, port, SOCKET_TIMEOUT)
             end
    @transport = Thrift::FramedTransport.new(socket)
    @transport.open
    protocol = Thrift::BinaryProtocol.new(@transport)
    mux = ->(name) { Thrift::MultiplexedProtocol.new(protocol, name) }
    @base = Glammp::Base::Base::Client.new(mux.call('Base'))
    @cache = Glammp::Cache::Cache::Client.new(mux.call('Cache'))
    @files = Glammp::Filestore::Filestore::Client.new(mux.call('Filestore'))
    @jobs = Glammp::Jobs::Jobs::Client.new(mux.call('Jobs'))
  end

  def close
    @transport.close
  end
end

# "400 BAD_REQUEST retryable=false origin=cache: message"
def describe(e)
  "#{e.code} #{ErrorCode::VALUE_MAP.fetch(e.code, 'UNKNOWN')} " \
    "retryable=#{e.retryable ? true : false} origin=#{e.origin}: #{e.message}"
end

# Runs the block, again (up to `attempts` times) while glammp says the error is retryable,
# waiting what the error asks for. A 400 or 404 will not get better: re-raised.
def with_retry(attempts = 3)
  tries = 0
  begin
    tries += 1
    yield
  rescue ServiceError => e
    raise if !e.retryable || tries >= attempts

    sleep((e.retry_after_ms || 100) / 1000.0)
    retry
  end
end

# Prints why a step is skipped when the server does not implement it yet (501).
def skip_if_not_implemented(step)
  yield
rescue ServiceError => e
  raise unless e.code == ErrorCode::NOT_IMPLEMENTED

  puts "#{step} skipped: #{describe(e)}"
end

# The cas retry loop: read the item with its cas token, compute the new value, store it only if
# nobody changed the item in between, and start over when somebody did.
# Returns [new value, attempts].
def cas_update(cache, key, max_attempts = 10)
  stored = Glammp::Cache::StoreResult::STORED
  (1..max_attempts).each do |attempt|
    item = cache.get(key, Glammp::Cache::ReadOptions.new)
    value = yield(item.found ? item.value : nil)
    result = if item.found
               cache.cas(key, value, item.cas, Glammp::Cache::WriteOptions.new)
             else
               cache.add(key, value, Glammp::Cache::WriteOptions.new)
             end
    return [value, attempt] if result == stored
    # EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
  end
  raise "cas on #{key} lost #{max_attempts} times in a row"
end

def cache_tour(cache)
  read = Glammp::Cache::ReadOptions.new
  stored = cache.put("#{PREFIX}greeting", 'hello from ruby',
                     Glammp::Cache::WriteOptions.new(ttl: 300))
  puts "put #{Glammp::Cache::StoreResult::VALUE_MAP[stored]}"

  item = with_retry { cache.get("#{PREFIX}greeting", read) }
  puts "get found value=#{item.value} type=#{Glammp::Cache::ValueType::VALUE_MAP[item.type]}"

  cache.put("#{PREFIX}a", '1', Glammp::Cache::WriteOptions.new)
  cache.put("#{PREFIX}b", '2', Glammp::Cache::WriteOptions.new)
  # preserve_order: misses are listed as found=false
  items = cache.get_multi(%W[#{PREFIX}a #{PREFIX}b #{PREFIX}missing], read, true)
  hits = items.count(&:found)
  puts "get_multi hits=#{hits} misses=#{items.size - hits}"

  # A concurrent writer is simulated inside the block: it changes the counter between our read
  # and our cas, so the first cas answers EXISTS and the loop runs again.
  cache.put("#{PREFIX}counter", '0', Glammp::Cache::WriteOptions.new)
  interfered = false
  value, attempts = cas_update(cache, "#{PREFIX}counter") do |old|
    unless interfered
      interfered = true
      cache.put("#{PREFIX}counter", '100', Glammp::Cache::WriteOptions.new)
    end
    (old.to_i + 1).to_s
  end
  puts "cas counter=#{value} attempts=#{attempts}"

  # A key with a space is not a memcached key: the cache answers ServiceError 400.
  begin
    cache.get('bad key', read)
    puts 'error none'
  rescue ServiceError => e
    puts "error #{describe(e)}"
  end
end

def file_tour(files)
  # The domain is made by an administrator (the dev cluster of `glammp serve` makes "glammp");
  # create_domain is an admin method that the gateway refuses to frontends.
  domain = ENV.fetch('GLAMMP_DOMAIN', 'glammp')
  content = "a file stored from Ruby\n".b
  skip_if_not_implemented('file') do
    info = files.store(domain, 'ruby/hello.txt', content, Glammp::Filestore::StoreOptions.new)
    puts "file stored #{info.length} bytes"
    data = files.fetch(domain, 'ruby/hello.txt', Glammp::Filestore::FetchOptions.new)
    puts "file fetched #{data.bytesize} bytes same=#{data == content}"
  end
end

# Polls until gearmand no longer knows the job (it finished), with a bounded wait, then prints
# the result a glammp worker stored for it.
def print_background_result(jobs, handle)
  200.times do
    break unless jobs.status(handle).known

    sleep 0.05
  end
  begin
    done = jobs.fetch_result(handle)
    puts "job background #{Glammp::Jobs::JobStatus::VALUE_MAP[done.status]} data=#{done.data}"
  rescue ServiceError => e
    raise unless e.code == ErrorCode::NOT_FOUND

    puts "job background finished (no stored result: #{describe(e)})"
  end
end

def job_tour(jobs)
  skip_if_not_implemented('job') do
    result = jobs.submit(Glammp::Jobs::Job.new(name: 'reverse', workload: 'glammp-ruby',
                                                timeout_ms: JOB_TIMEOUT_MS))
    puts "job submit #{Glammp::Jobs::JobStatus::VALUE_MAP[result.status]} data=#{result.data}"

    submitted = jobs.submit_background(Glammp::Jobs::Job.new(name: 'reverse',
                                                             workload: 'background-ruby'))
    print_background_result(jobs, submitted.handle)
  end
end

glammp = Glammp::Connection.new(ENV.fetch('GLAMMP_HOST', '127.0.0.1'),
                                Integer(ENV.fetch('GLAMMP_PORT', '9090')), ENV['GLAMMP_TLS_CA'])
begin
  if ARGV[0] == 'result'
    print_background_result(glammp.jobs, ARGV[1])
  else
    puts "status #{Glammp::Base::Status::VALUE_MAP[glammp.base.getStatus]}"
    cache_tour(glammp.cache)
    file_tour(glammp.files)
    job_tour(glammp.jobs)
  end
rescue ServiceError => e
  warn "ServiceError #{describe(e)}"
  exit 2
ensure
  glammp.close
end
