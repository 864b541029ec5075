// Command null is the HTTP floor of the benchmark: it reads every request body and answers with
// OpenIM's fixed continue envelope, doing nothing else.
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
)

var envelope = []byte(`{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}`)

func main() {
	addr := flag.String("addr", "127.0.0.1:10006", "listen address")
	flag.Parse()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(envelope)
	})
	log.Printf("null listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, handler))
}
