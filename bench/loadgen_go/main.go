// A load generator for the gateway benchmark, with bench/loadgen.py's arguments and output:
//
//	loadgen HOST PORT CONNECTIONS SECONDS REQUEST_HEX
//
// Each connection (a goroutine) sends the pre-encoded framed request, reads one whole framed
// reply, counts it as a call when it is a REPLY (an error otherwise) and sends the next,
// until SECONDS pass. It prints one JSON line: calls, errors, seconds, p50_us, p99_us and
// loadgen_cpu_us_per_call.
//
// The Python generator costs about 20 µs of CPU per call. In the gateway benchmark three
// processes share two cores, and the generator shares its core with the gateway, so its own
// cost would be measured as the gateway's shortfall; this one costs a few µs.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var reply = []byte{0x80, 0x01, 0x00, 0x02}

type result struct {
	calls, errors int
	samples       []float64
	err           error
}

func drive(c *net.TCPConn, req []byte, stop time.Time) result {
	var r result
	buf := make([]byte, 0, 1<<16)
	tmp := make([]byte, 1<<18)
	for {
		sent := time.Now()
		if _, err := c.Write(req); err != nil {
			r.err = err
			return r
		}
		size := -1
		for size < 0 || len(buf) < 4+size {
			if size < 0 && len(buf) >= 4 {
				size = int(binary.BigEndian.Uint32(buf[:4]))
				continue
			}
			n, err := c.Read(tmp)
			if err != nil {
				r.err = fmt.Errorf("server closed a connection: %v", err)
				return r
			}
			buf = append(buf, tmp[:n]...)
		}
		now := time.Now()
		if bytes.Equal(buf[4:8], reply) {
			r.calls++
		} else {
			r.errors++
		}
		if (r.calls+r.errors)%16 == 0 {
			r.samples = append(r.samples, now.Sub(sent).Seconds())
		}
		buf = buf[:copy(buf, buf[4+size:])]
		if now.After(stop) {
			return r
		}
	}
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: loadgen HOST PORT CONNECTIONS SECONDS REQUEST_HEX")
		os.Exit(2)
	}
	conns, err1 := strconv.Atoi(os.Args[3])
	seconds, err2 := strconv.ParseFloat(os.Args[4], 64)
	req, err3 := hex.DecodeString(os.Args[5])
	if err1 != nil || err2 != nil || err3 != nil {
		fmt.Fprintln(os.Stderr, "loadgen: bad arguments")
		os.Exit(2)
	}
	addr := net.JoinHostPort(os.Args[1], os.Args[2])
	sockets := make([]*net.TCPConn, conns)
	for i := range sockets {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		sockets[i] = c.(*net.TCPConn)
		sockets[i].SetNoDelay(true)
	}
	start := time.Now()
	stop := start.Add(time.Duration(seconds * float64(time.Second)))
	results := make([]result, conns)
	var wg sync.WaitGroup
	for i, c := range sockets {
		wg.Add(1)
		go func(i int, c *net.TCPConn) {
			defer wg.Done()
			results[i] = drive(c, req, stop)
		}(i, c)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var total result
	for i, r := range results {
		if r.err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", r.err)
			os.Exit(1)
		}
		total.calls += r.calls
		total.errors += r.errors
		total.samples = append(total.samples, r.samples...)
		sockets[i].Close()
	}
	sort.Float64s(total.samples)
	pct := func(p float64) float64 {
		if len(total.samples) == 0 {
			return 0
		}
		i := int(p * float64(len(total.samples)))
		if i >= len(total.samples) {
			i = len(total.samples) - 1
		}
		return total.samples[i] * 1e6
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	calls := total.calls
	if calls < 1 {
		calls = 1
	}
	out, _ := json.Marshal(map[string]any{
		"calls": total.calls, "errors": total.errors, "seconds": elapsed,
		"p50_us": pct(0.5), "p99_us": pct(0.99),
		"loadgen_cpu_us_per_call": cpu / float64(calls) * 1e6,
	})
	fmt.Println(string(out))
}
