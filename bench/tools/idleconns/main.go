// Command idleconns opens N keep-alive HTTP/1.1 connections to a server, sends one POST on each
// (reading the whole answer), and then keeps them all open and idle. It prints "ready N" on stdout
// once every connection has had its answer (or "failed K: first error" and exits 1), then holds
// the connections until its standard input is closed or -hold passes.
//
// Usage: idleconns -addr HOST:PORT -path /x/callbackBeforeCreateGroupCommand -body FILE [-n 1000]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	addr := flag.String("addr", "", "server host:port")
	path := flag.String("path", "/", "request path")
	bodyFile := flag.String("body", "", "request body file")
	n := flag.Int("n", 1000, "connections")
	hold := flag.Duration("hold", 60*time.Second, "longest time to hold the connections")
	flag.Parse()
	body, err := os.ReadFile(*bodyFile)
	if err != nil || *addr == "" {
		fmt.Fprintln(os.Stderr, "idleconns: need -addr and a readable -body:", err)
		os.Exit(2)
	}
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\n"+
		"Content-Length: %d\r\nContent-Type: application/json; charset=utf-8\r\n"+
		"Operationid: 1719800000123453781\r\nAccept-Encoding: gzip\r\n\r\n%s",
		*path, *addr, len(body), body)

	conns := make([]net.Conn, *n)
	errs := make([]error, *n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // connect at most 64 at a time
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, req); err != nil {
				errs[i] = err
				return
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				errs[i] = err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(b) == 0 {
				errs[i] = fmt.Errorf("status %d body %q", resp.StatusCode, b)
			}
			_ = c.SetDeadline(time.Time{})
		}()
	}
	wg.Wait()
	failed := 0
	var first error
	for _, e := range errs {
		if e != nil {
			failed++
			if first == nil {
				first = e
			}
		}
	}
	if failed > 0 {
		fmt.Printf("failed %d: %v\n", failed, first)
		os.Exit(1)
	}
	fmt.Printf("ready %d\n", *n)
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
