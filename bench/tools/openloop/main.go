// Command openloop is an open-loop HTTP load generator (wrk2 is not in Debian): it schedules POSTs
// at a fixed rate, independent of how fast answers come back, spreads them over N keep-alive
// connections, and measures each latency from the request's scheduled time (so a stall shows up in
// the latency of everything queued behind it instead of lowering the offered rate). It prints
// one JSON object.
//
// Usage: openloop -url URL -body FILE [-rate 5000] [-duration 5s] [-conns 64] [-warmup 1s]
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Offered    float64 `json:"offered_per_s"`
	WarmupSent int64   `json:"warmup_sent"`
	Sent       int64   `json:"sent"`
	OK         int64   `json:"ok"`
	Failed     int64   `json:"failed"`
	Unfinished int64   `json:"unfinished"`
	Seconds    float64 `json:"seconds"`
	Achieved   float64 `json:"ok_per_s"`
	P50        float64 `json:"p50_us"`
	P99        float64 `json:"p99_us"`
	P999       float64 `json:"p999_us"`
	Max        float64 `json:"max_us"`
	FirstError string  `json:"first_error,omitempty"`
}

func main() {
	url := flag.String("url", "", "target URL")
	bodyFile := flag.String("body", "", "request body file")
	rate := flag.Float64("rate", 5000, "requests per second offered")
	duration := flag.Duration("duration", 5*time.Second, "measured duration")
	warmup := flag.Duration("warmup", time.Second, "unmeasured warm-up at the same rate")
	conns := flag.Int("conns", 64, "keep-alive connections (and most requests in flight)")
	opid := flag.String("operation-id", "1719800000123453781", "Operationid header")
	flag.Parse()
	body, err := os.ReadFile(*bodyFile)
	if err != nil || *url == "" {
		fmt.Fprintln(os.Stderr, "openloop: need -url and a readable -body:", err)
		os.Exit(2)
	}
	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: *conns, MaxConnsPerHost: *conns},
		Timeout:   10 * time.Second,
	}

	type job struct {
		due      time.Time
		measured bool
	}
	jobs := make(chan job, 1<<20)
	var (
		mu       sync.Mutex
		lat      []float64
		ok, fail atomic.Int64
		firstErr atomic.Value
		lastDone atomic.Int64
		wg       sync.WaitGroup
	)
	do := func(j job) {
		req, _ := http.NewRequest(http.MethodPost, *url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		req.Header.Set("operationID", *opid)
		resp, err := client.Do(req)
		good := false
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			good = resp.StatusCode == 200 && bytes.Contains(b, []byte(`"errCode":0`))
			if !good {
				err = fmt.Errorf("status %d body %q", resp.StatusCode, b)
			}
		}
		if !j.measured {
			return
		}
		now := time.Now()
		if good {
			ok.Add(1)
			us := float64(now.Sub(j.due).Nanoseconds()) / 1e3
			mu.Lock()
			lat = append(lat, us)
			mu.Unlock()
			lastDone.Store(now.UnixNano())
		} else {
			fail.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
	}
	for range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				do(j)
			}
		}()
	}

	interval := time.Duration(float64(time.Second) / *rate)
	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	var sent, warm int64
	next := start
	for next.Before(end) {
		now := time.Now()
		for !next.After(now) && next.Before(end) {
			m := !next.Before(measureFrom)
			if m {
				sent++
			} else {
				warm++
			}
			jobs <- job{due: next, measured: m}
			next = next.Add(interval)
		}
		time.Sleep(200 * time.Microsecond)
	}
	close(jobs)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		i := int(p / 100 * float64(len(lat)-1))
		return lat[i]
	}
	r := result{
		Offered: *rate, WarmupSent: warm, Sent: sent, OK: ok.Load(), Failed: fail.Load(),
		P50: pct(50), P99: pct(99), P999: pct(99.9),
	}
	r.Unfinished = sent - r.OK - r.Failed
	if len(lat) > 0 {
		r.Max = lat[len(lat)-1]
	}
	if ld := lastDone.Load(); ld > 0 {
		r.Seconds = float64(ld-measureFrom.UnixNano()) / 1e9
		if r.Seconds < duration.Seconds() {
			r.Seconds = duration.Seconds()
		}
		r.Achieved = float64(r.OK) / r.Seconds
	}
	if e, okk := firstErr.Load().(string); okk {
		r.FirstError = e
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}
