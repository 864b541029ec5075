// Command openim-client posts callbacks to a webhook URL exactly as OpenIM's server does
// (openimsdk/tools httputil + openimsdk/open-im-server pkg/common/webhook/http_client.go):
// one http.Client{Timeout: 15s} with Transport{MaxConnsPerHost: 100} (keep-alive, pooled
// connections), json.NewEncoder bodies, the operationID and Content-Type headers, a 5 s context
// per call, io.ReadAll and json.Unmarshal of the answer. Each round sends oversized bodies, each
// followed by a normal callback on the pooled connection, and counts every call that fails the
// way OpenIM would fail the user's operation (network error, unreadable answer).
//
//	go run . -url http://127.0.0.1:10006/callbackExample -payload body.json -rounds 10
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type envelope struct {
	ActionCode *int32  `json:"actionCode"`
	ErrCode    *int32  `json:"errCode"`
	ErrMsg     *string `json:"errMsg"`
	ErrDlt     *string `json:"errDlt"`
	NextCode   *int32  `json:"nextCode"`
}

func main() {
	url := flag.String("url", "", "OpenIM's webhooks.yml url")
	command := flag.String("command", "callbackBeforeCreateGroupCommand", "callback command")
	payload := flag.String("payload", "", "a real request body of the command (JSON)")
	sizes := flag.String("sizes", "5242880,52428800", "oversized body sizes in bytes")
	rounds := flag.Int("rounds", 10, "rounds")
	flag.Parse()

	raw, err := os.ReadFile(*payload)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var base map[string]any
	if err := json.Unmarshal(raw, &base); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 100}}
	post := func(body map[string]any) (envelope, error) {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			return envelope{}, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "POST", *url+"/"+*command, &buf)
		if err != nil {
			return envelope{}, err
		}
		req.Header.Set("operationID", "1719800000123453781")
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		resp, err := client.Do(req)
		if err != nil {
			return envelope{}, fmt.Errorf("90004 network: %w", err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return envelope{}, fmt.Errorf("90004 network: %w", err)
		}
		var env envelope
		if err := json.Unmarshal(b, &env); err != nil {
			return envelope{}, fmt.Errorf("response format error: %w (%q)", err, b)
		}
		if env.ActionCode == nil || env.ErrCode == nil || env.ErrMsg == nil || env.ErrDlt == nil || env.NextCode == nil {
			return envelope{}, fmt.Errorf("envelope key missing: %q", b)
		}
		return env, nil
	}

	var failures, oversized, normal int
	for round := 0; round < *rounds; round++ {
		for _, s := range strings.Split(*sizes, ",") {
			var size int
			fmt.Sscan(s, &size)
			big := map[string]any{}
			for k, v := range base {
				big[k] = v
			}
			big["introduction"] = strings.Repeat("x", size)
			if _, err := post(big); err != nil {
				failures++
				fmt.Fprintf(os.Stderr, "round %d, %d bytes: %v\n", round, size, err)
			} else {
				oversized++
			}
			if _, err := post(base); err != nil {
				failures++
				fmt.Fprintf(os.Stderr, "round %d, the callback after %d bytes: %v\n", round, size, err)
			} else {
				normal++
			}
		}
	}
	fmt.Printf("oversized answered: %d, normal after them: %d, failures: %d\n", oversized, normal, failures)
	if failures > 0 {
		os.Exit(1)
	}
}
