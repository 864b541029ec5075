// Command grpc-gateway is the benchmark's grpc-gateway v2 peer: the generated reverse proxy for
// GroupCallbackService (protoc-gen-grpc-gateway with generate_unbound_methods=true, see ./generate)
// in front of the same upstream as the gateway. It maps
//
//	POST /openim.callback.v1.GroupCallbackService/<Rpc>   (JSON body: the request message)
//
// to the unary call and answers with the reply message as protojson. It does NOT produce OpenIM's
// envelope (actionCode/errCode/…), route on the OpenIM command, or spool after-events, so its
// figures are a lower bound for a grpc-gateway deployment that did.
//
// OpenIM's keys are the protos' json_name, which protojson accepts; DiscardUnknown lets keys the
// contract does not declare through, as the gateway does.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	gw "github.com/openim-callback-gateway/bench/peers/grpc-gateway/gen/openim/callback/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "HTTP listen address")
	upstream := flag.String("upstream", "127.0.0.1:50051", "gRPC upstream host:port")
	flag.Parse()

	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: false},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
	}))
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if err := gw.RegisterGroupCallbackServiceHandlerFromEndpoint(context.Background(), mux, *upstream, opts); err != nil {
		log.Fatal(err)
	}
	log.Printf("grpc-gateway listening on %s, upstream %s", *addr, *upstream)
	log.Fatal(http.ListenAndServe(*addr, mux))
}
