#!/usr/bin/perl
# Calling glammp from Perl: the cache, files and jobs over one multiplexed connection.
#
#   perl example.pl      the tour (prints one line per step)
#
# GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090); with
# GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
# by that CA (what a gateway with [gateway.tls] offers);
# GLAMMP_PERL_STUBS where `make stubs` put the generated code (default ../../build/stubs/perl).
# Perl's Thrift library has no compact protocol: use framed binary (glammp's default).
# The jobs part needs a worker serving `reverse`, e.g.
#   glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use Time::HiRes qw(usleep);

BEGIN {
    unshift @INC, $ENV{GLAMMP_PERL_STUBS}
        || File::Spec->catdir(dirname(File::Spec->rel2abs(__FILE__)), qw(.. .. build stubs perl));
}

use Thrift::BinaryProtocol;
use Thrift::FramedTransport;
use Thrift::MultiplexedProtocol;
use Thrift::Socket;
use Thrift::SSLSocket;
use Glammp::Base::Base;
use Glammp::Cache::Cache;
use Glammp::Filestore::Filestore;
use Glammp::Jobs::Jobs;

# Milliseconds; the receive timeout must outlast the slowest call, here a foreground job.
use constant SEND_TIMEOUT_MS => 5_000;
use constant RECV_TIMEOUT_MS => 15_000;
use constant JOB_TIMEOUT_MS  => 10_000;
use constant PREFIX          => 'example:perl:';

# The name of a generated enum value (Perl's generator emits constants only).
sub enum_name {
    my ($package, $value) = @_;
    no strict 'refs';
    for my $name (sort keys %{"${package}::"}) {
        next unless $name =~ /^[A-Z][A-Z_]*$/;
        my $constant = $package->can($name) or next;
        return $name if $constant->() == $value;
    }
    return "UNKNOWN($value)";
}

sub is_service_error { my ($e) = @_; return ref $e && $e->isa('Glammp::Common::ServiceError') }

# "400 BAD_REQUEST retryable=false origin=cache: message"
sub describe {
    my ($e) = @_;
    return sprintf '%d %s retryable=%s origin=%s: %s', $e->code,
        enum_name('Glammp::Common::ErrorCode', $e->code), $e->retryable ? 'true' : 'false',
        $e->origin // '?', $e->message;
}

# Runs $call, again (up to $attempts times) while glammp says the error is retryable, waiting
# what the error asks for. A 400 or 404 will not get better: rethrown.
sub with_retry {
    my ($call, $attempts) = @_;
    for (my $i = 1; ; $i++) {
        my $result = eval { $call->() };
        return $result unless $@;
        my $e = $@;
        die $e unless is_service_error($e) && $e->retryable && $i < $attempts;
        usleep(1000 * ($e->retry_after_ms || 100));
    }
}

# Runs $step; prints why it is skipped when the server does not implement it yet (501).
sub skip_if_not_implemented {
    my ($name, $step) = @_;
    eval { $step->(); 1 } and return;
    my $e = $@;
    die $e unless is_service_error($e) && $e->code == Glammp::Common::ErrorCode::NOT_IMPLEMENTED;
    print "$name skipped: ", describe($e), "\n";
}

# The cas retry loop: read the item with its cas token, compute the new value, store it only if
# nobody changed the item in between, and start over when somebody did.
# Returns (new value, attempts).
sub cas_update {
    my ($cache, $key, $change, $max_attempts) = @_;
    for my $attempt (1 .. $max_attempts) {
        my $item = $cache->get($key, Glammp::Cache::ReadOptions->new);
        my $value = $change->($item->found ? $item->value : undef);
        my $result = $item->found
            ? $cache->cas($key, $value, $item->cas, Glammp::Cache::WriteOptions->new)
            : $cache->add($key, $value, Glammp::Cache::WriteOptions->new);
        return ($value, $attempt) if $result == Glammp::Cache::StoreResult::STORED;
        # EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
    }
    die "cas on $key lost $max_attempts times in a row\n";
}

sub cache_tour {
    my ($cache) = @_;
    my $read = Glammp::Cache::ReadOptions->new;
    my $stored = $cache->put(PREFIX . 'greeting', 'hello from perl',
                             Glammp::Cache::WriteOptions->new({ttl => 300}));
    print 'put ', enum_name('Glammp::Cache::StoreResult', $stored), "\n";

    my $item = with_retry(sub { $cache->get(PREFIX . 'greeting', $read) }, 3);
    printf "get found value=%s type=%s\n", $item->value,
        enum_name('Glammp::Cache::ValueType', $item->type);

    $cache->put(PREFIX . 'a', '1', Glammp::Cache::WriteOptions->new);
    $cache->put(PREFIX . 'b', '2', Glammp::Cache::WriteOptions->new);
    # preserve_order: misses are listed as found=false
    my $items = $cache->get_multi([map { PREFIX . $_ } qw(a b missing)], $read, 1);
    my $hits = grep { $_->found } @$items;
    printf "get_multi hits=%d misses=%d\n", $hits, @$items - $hits;

    # A concurrent writer is simulated inside the change function: it changes the counter
    # between our read and our cas, so the first cas answers EXISTS and the loop runs again.
    $cache->put(PREFIX . 'counter', '0', Glammp::Cache::WriteOptions->new);
    my $interfered = 0;
    my ($value, $attempts) = cas_update($cache, PREFIX . 'counter', sub {
        my ($old) = @_;
        unless ($interfered++) {
            $cache->put(PREFIX . 'counter', '100', Glammp::Cache::WriteOptions->new);
        }
        return ($old // 0) + 1;
    }, 10);
    print "cas counter=$value attempts=$attempts\n";

    # A key with a space is not a memcached key: the cache answers ServiceError 400.
    if (eval { $cache->get('bad key', $read); 1 }) {
        print "error none\n";
    } else {
        my $e = $@;
        die $e unless is_service_error($e);
        print 'error ', describe($e), "\n";
    }
}

sub file_tour {
    my ($files) = @_;
    # The domain is made by an administrator (the dev cluster of `glammp serve` makes
    # "glammp"); create_domain is an admin method that the gateway refuses to frontends.
    my $domain = $ENV{GLAMMP_DOMAIN} || 'glammp';
    my $content = "a file stored from Perl\n";
    skip_if_not_implemented('file', sub {
        my $info = $files->store($domain, 'perl/hello.txt', $content,
                                 Glammp::Filestore::StoreOptions->new);
        print 'file stored ', $info->length, " bytes\n";
        my $data = $files->fetch($domain, 'perl/hello.txt', Glammp::Filestore::FetchOptions->new);
        printf "file fetched %d bytes same=%s\n", length $data,
            $data eq $content ? 'true' : 'false';
    });
}

sub job_tour {
    my ($jobs) = @_;
    skip_if_not_implemented('job', sub {
        my $result = $jobs->submit(Glammp::Jobs::Job->new({
            name => 'reverse', workload => 'glammp-perl', timeout_ms => JOB_TIMEOUT_MS}));
        printf "job submit %s data=%s\n", enum_name('Glammp::Jobs::JobStatus', $result->status),
            $result->data;

        my $submitted = $jobs->submit_background(Glammp::Jobs::Job->new({
            name => 'reverse', workload => 'background-perl'}));
        # Poll until gearmand no longer knows the job (it finished), with a bounded wait.
        for (1 .. 200) {
            last unless $jobs->status($submitted->handle)->known;
            usleep(50_000);
        }
        my $done = eval { $jobs->fetch_result($submitted->handle) };
        if (my $e = $@) {
            die $e unless is_service_error($e)
                && $e->code == Glammp::Common::ErrorCode::NOT_FOUND;
            print 'job background finished (no stored result: ', describe($e), ")\n";
            return;
        }
        printf "job background %s data=%s\n", enum_name('Glammp::Jobs::JobStatus', $done->status),
            $done->data;
    });
}

# One framed binary connection; every service is multiplexed over it by name.
my %address = (host => $ENV{GLAMMP_HOST} || '127.0.0.1', port => $ENV{GLAMMP_PORT} || 9090);
my $socket = $ENV{GLAMMP_TLS_CA}
    ? Thrift::SSLSocket->new({%address, ca => $ENV{GLAMMP_TLS_CA}})
    : Thrift::Socket->new({%address});
$socket->setSendTimeout(SEND_TIMEOUT_MS);
$socket->setRecvTimeout(RECV_TIMEOUT_MS);
my $transport = Thrift::FramedTransport->new($socket);
my $protocol = Thrift::BinaryProtocol->new($transport);
my %client = map {
    my ($name, $class) = @$_;
    ($name => $class->new(Thrift::MultiplexedProtocol->new($protocol, $name)))
} (['Base', 'Glammp::Base::BaseClient'], ['Cache', 'Glammp::Cache::CacheClient'],
   ['Filestore', 'Glammp::Filestore::FilestoreClient'], ['Jobs', 'Glammp::Jobs::JobsClient']);

my $ok = eval {
    $transport->open;
    print 'status ', enum_name('Glammp::Base::Status', $client{Base}->getStatus), "\n";
    cache_tour($client{Cache});
    file_tour($client{Filestore});
    job_tour($client{Jobs});
    1;
};
my $error = $@;
$transport->close if $transport->isOpen;
unless ($ok) {
    my $text = is_service_error($error) ? 'ServiceError ' . describe($error) : "$error";
    chomp $text;
    # Thrift::SSLSocket does not say why a handshake failed; IO::Socket::SSL does.
    $text .= " ($IO::Socket::SSL::SSL_ERROR)" if $IO::Socket::SSL::SSL_ERROR;
    print STDERR "$text\n";
    exit 2;
}
