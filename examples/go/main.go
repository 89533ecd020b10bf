// Command glammp-example calls glammp from Go: the cache, files and jobs over one multiplexed
// connection.
//
//	glammp-example                                     the tour (one line per step)
//	glammp-example submit-background FUNCTION WORKLOAD  queues a job, prints its handle
//
// GLAMMP_HOST and GLAMMP_PORT say where glammp listens (default 127.0.0.1:9090). With
// GLAMMP_TLS_CA (a PEM file) the connection is TLS, and the server's certificate must be signed
// by that CA and name the host (what a gateway with [gateway.tls] offers). The jobs part
// needs a worker serving "reverse", e.g.
//
//	glammp worker --server 127.0.0.1:4730 reverse=tests.examples.jobfuncs:reverse
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"glammp/base"
	"glammp/cache"
	"glammp/common"
	"glammp/filestore"
	"glammp/jobs"
)

const (
	connectTimeout = 5 * time.Second
	// socketTimeout must outlast the slowest call, here a foreground job (jobTimeout).
	socketTimeout = 15 * time.Second
	jobTimeout    = 10 * time.Second
	prefix        = "example:go:"
)

// Glammp is one framed binary connection; every service is multiplexed over it by name.
type Glammp struct {
	transport thrift.TTransport
	Base      *base.BaseClient
	Cache     *cache.CacheClient
	Files     *filestore.FilestoreClient
	Jobs      *jobs.JobsClient
}

func connect(host, port, tlsCA string) (*Glammp, error) {
	conf := &thrift.TConfiguration{ConnectTimeout: connectTimeout, SocketTimeout: socketTimeout}
	var socket thrift.TTransport = thrift.NewTSocketConf(net.JoinHostPort(host, port), conf)
	if tlsCA != "" {
		pem, err := os.ReadFile(tlsCA)
		if err != nil {
			return nil, err
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", tlsCA)
		}
		// ServerName defaults to the host dialed: the certificate must name it.
		conf.TLSConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		socket = thrift.NewTSSLSocketConf(net.JoinHostPort(host, port), conf)
	}
	transport := thrift.NewTFramedTransportConf(socket, conf)
	if err := transport.Open(); err != nil {
		return nil, err
	}
	protocol := thrift.NewTBinaryProtocolConf(transport, conf)
	client := func(service string) thrift.TClient {
		mux := thrift.NewTMultiplexedProtocol(protocol, service)
		return thrift.NewTStandardClient(mux, mux)
	}
	return &Glammp{
		transport: transport,
		Base:      base.NewBaseClient(client("Base")),
		Cache:     cache.NewCacheClient(client("Cache")),
		Files:     filestore.NewFilestoreClient(client("Filestore")),
		Jobs:      jobs.NewJobsClient(client("Jobs")),
	}, nil
}

func (g *Glammp) Close() error { return g.transport.Close() }

// describe gives "400 BAD_REQUEST retryable=false origin=cache: message".
func describe(e *common.ServiceError) string {
	return fmt.Sprintf("%d %s retryable=%t origin=%s: %s", e.Code, common.ErrorCode(e.Code),
		e.GetRetryable(), e.GetOrigin(), e.Message)
}

// serviceError returns the ServiceError inside err, or nil when err is something else
// (a transport error, a timeout: the connection is then unusable).
func serviceError(err error) *common.ServiceError {
	var se *common.ServiceError
	if errors.As(err, &se) {
		return se
	}
	return nil
}

// withRetry runs call, again (up to attempts times) while glammp says the error is retryable,
// waiting what the error asks for. A 400 or 404 will not get better: returned at once.
func withRetry[T any](attempts int, call func() (T, error)) (T, error) {
	for i := 1; ; i++ {
		v, err := call()
		se := serviceError(err)
		if err == nil || se == nil || !se.GetRetryable() || i >= attempts {
			return v, err
		}
		wait := time.Duration(se.GetRetryAfterMs()) * time.Millisecond
		if wait == 0 {
			wait = 100 * time.Millisecond
		}
		time.Sleep(wait)
	}
}

// skipIfNotImplemented prints why a step is skipped when the server does not implement it yet
// (501) and returns nil; any other error is returned.
func skipIfNotImplemented(step string, err error) error {
	if se := serviceError(err); se != nil && se.Code == int32(common.ErrorCode_NOT_IMPLEMENTED) {
		fmt.Printf("%s skipped: %s\n", step, describe(se))
		return nil
	}
	return err
}

// casUpdate is the cas retry loop: read the item with its cas token, compute the new value,
// store it only if nobody changed the item in between, and start over when somebody did.
// It returns the new value and the attempts it took.
func casUpdate(ctx context.Context, c *cache.CacheClient, key string,
	change func(old []byte) ([]byte, error), maxAttempts int) ([]byte, int, error) {
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		item, err := c.Get(ctx, key, cache.NewReadOptions())
		if err != nil {
			return nil, attempt, err
		}
		var old []byte
		if item.Found {
			old = item.Value
		}
		value, err := change(old)
		if err != nil {
			return nil, attempt, err
		}
		var result cache.StoreResult_
		if item.Found {
			result, err = c.Cas(ctx, key, value, item.Cas, cache.NewWriteOptions())
		} else {
			result, err = c.Add(ctx, key, value, cache.NewWriteOptions())
		}
		if err != nil {
			return nil, attempt, err
		}
		if result == cache.StoreResult__STORED {
			return value, attempt, nil
		}
		// EXISTS: changed since we read it; NOT_FOUND / NOT_STORED: deleted or created meanwhile.
	}
	return nil, maxAttempts, fmt.Errorf("cas on %s lost %d times in a row", key, maxAttempts)
}

func cacheTour(ctx context.Context, c *cache.CacheClient) error {
	opts := cache.NewWriteOptions()
	opts.TTL = 300
	stored, err := c.Put(ctx, prefix+"greeting", []byte("hello from go"), opts)
	if err != nil {
		return err
	}
	fmt.Println("put", stored)

	item, err := withRetry(3, func() (*cache.Item, error) {
		return c.Get(ctx, prefix+"greeting", cache.NewReadOptions())
	})
	if err != nil {
		return err
	}
	fmt.Printf("get found value=%s type=%s\n", item.Value, item.Type)

	for key, value := range map[string]string{"a": "1", "b": "2"} {
		if _, err := c.Put(ctx, prefix+key, []byte(value), cache.NewWriteOptions()); err != nil {
			return err
		}
	}
	keys := []string{prefix + "a", prefix + "b", prefix + "missing"}
	items, err := c.GetMulti(ctx, keys, cache.NewReadOptions(), true) // misses as found=false
	if err != nil {
		return err
	}
	hits := 0
	for _, it := range items {
		if it.Found {
			hits++
		}
	}
	fmt.Printf("get_multi hits=%d misses=%d\n", hits, len(items)-hits)

	// A concurrent writer is simulated inside the change function: it changes the counter
	// between our read and our cas, so the first cas answers EXISTS and the loop runs again.
	if _, err := c.Put(ctx, prefix+"counter", []byte("0"), cache.NewWriteOptions()); err != nil {
		return err
	}
	interfered := false
	value, attempts, err := casUpdate(ctx, c, prefix+"counter", func(old []byte) ([]byte, error) {
		if !interfered {
			interfered = true
			if _, err := c.Put(ctx, prefix+"counter", []byte("100"),
				cache.NewWriteOptions()); err != nil {
				return nil, err
			}
		}
		n, _ := strconv.Atoi(string(old))
		return []byte(strconv.Itoa(n + 1)), nil
	}, 10)
	if err != nil {
		return err
	}
	fmt.Printf("cas counter=%s attempts=%d\n", value, attempts)

	// A key with a space is not a memcached key: the cache answers ServiceError 400.
	if _, err := c.Get(ctx, "bad key", cache.NewReadOptions()); err == nil {
		fmt.Println("error none")
	} else if se := serviceError(err); se != nil {
		fmt.Println("error", describe(se))
	} else {
		return err
	}
	return nil
}

func fileTour(ctx context.Context, f *filestore.FilestoreClient) error {
	// The domain is made by an administrator (the dev cluster of `glammp serve` makes
	// "glammp"); create_domain is an admin method that the gateway refuses to frontends.
	domain := getenv("GLAMMP_DOMAIN", "glammp")
	content := []byte("a file stored from Go\n")
	err := func() error {
		info, err := f.Store(ctx, domain, "go/hello.txt", content, filestore.NewStoreOptions())
		if err != nil {
			return err
		}
		fmt.Printf("file stored %d bytes\n", info.Length)
		data, err := f.Fetch(ctx, domain, "go/hello.txt", filestore.NewFetchOptions())
		if err != nil {
			return err
		}
		fmt.Printf("file fetched %d bytes same=%t\n", len(data), bytes.Equal(data, content))
		return nil
	}()
	return skipIfNotImplemented("file", err)
}

func submitBackground(ctx context.Context, j *jobs.JobsClient, name, workload string) (
	*jobs.Submitted, error) {
	job := jobs.NewJob()
	job.Name, job.Workload = name, []byte(workload)
	return j.SubmitBackground(ctx, job)
}

func jobTour(ctx context.Context, j *jobs.JobsClient) error {
	err := func() error {
		job := jobs.NewJob()
		job.Name, job.Workload = "reverse", []byte("glammp-go")
		ms := int32(jobTimeout / time.Millisecond)
		job.TimeoutMs = &ms
		result, err := j.Submit(ctx, job)
		if err != nil {
			return err
		}
		fmt.Printf("job submit %s data=%s\n", result.Status, result.Data)

		submitted, err := submitBackground(ctx, j, "reverse", "background-go")
		if err != nil {
			return err
		}
		// Poll until gearmand no longer knows the job (it finished), with a bounded wait.
		for i := 0; i < 200; i++ {
			state, err := j.Status(ctx, submitted.Handle)
			if err != nil {
				return err
			}
			if !state.Known {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		done, err := j.FetchResult_(ctx, submitted.Handle)
		if se := serviceError(err); se != nil && se.Code == int32(common.ErrorCode_NOT_FOUND) {
			fmt.Printf("job background finished (no stored result: %s)\n", describe(se))
			return nil
		} else if err != nil {
			return err
		}
		fmt.Printf("job background %s data=%s\n", done.Status, done.Data)
		return nil
	}()
	return skipIfNotImplemented("job", err)
}

func run(ctx context.Context, g *Glammp, args []string) error {
	if len(args) == 3 && args[0] == "submit-background" {
		submitted, err := submitBackground(ctx, g.Jobs, args[1], args[2])
		if err != nil {
			return err
		}
		fmt.Println("job background handle=" + submitted.Handle)
		return nil
	}
	status, err := g.Base.GetStatus(ctx)
	if err != nil {
		return err
	}
	fmt.Println("status", status)
	if err := cacheTour(ctx, g.Cache); err != nil {
		return err
	}
	if err := fileTour(ctx, g.Files); err != nil {
		return err
	}
	return jobTour(ctx, g.Jobs)
}

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	g, err := connect(getenv("GLAMMP_HOST", "127.0.0.1"), getenv("GLAMMP_PORT", "9090"),
		os.Getenv("GLAMMP_TLS_CA"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer g.Close()
	if err := run(context.Background(), g, os.Args[1:]); err != nil {
		if se := serviceError(err); se != nil {
			fmt.Fprintln(os.Stderr, "ServiceError", describe(se))
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		g.Close()
		os.Exit(2)
	}
}
