// Command upstream is the benchmark's trivial gRPC upstream: GroupCallbackService's
// BeforeCreateGroup and AfterQuitGroup return an empty reply at once, everything else is
// UNIMPLEMENTED. With -reply modify, BeforeCreateGroup answers the sample reply of
// callbackBeforeCreateGroupCommand instead (groupID, groupName, needVerification set): a modify,
// whose override fields the gateway writes into the envelope. It serves grpc.health.v1 (SERVING) so the gateway's readiness checks pass, and,
// with -stats, a tiny HTTP endpoint GET /count answering {"before":N,"after":M} (the calls served),
// which the harness reads to measure spool delivery.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"net/http"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

var before, after atomic.Int64

// modify: BeforeCreateGroup answers a modify instead of an empty reply (-reply modify).
var modify bool

func ptr[T any](v T) *T { return &v }

type groups struct {
	pb.UnimplementedGroupCallbackServiceServer
}

func (groups) BeforeCreateGroup(context.Context, *pb.BeforeCreateGroupRequest) (*pb.BeforeCreateGroupResponse, error) {
	before.Add(1)
	if modify {
		return &pb.BeforeCreateGroupResponse{
			GroupId:          ptr("phoenix-2024"),
			GroupName:        ptr("Project Phoenix [internal]"),
			NeedVerification: ptr(int32(1)),
		}, nil
	}
	return &pb.BeforeCreateGroupResponse{}, nil
}

func (groups) AfterQuitGroup(context.Context, *pb.AfterQuitGroupRequest) (*pb.AfterQuitGroupResponse, error) {
	after.Add(1)
	return &pb.AfterQuitGroupResponse{}, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "gRPC listen address")
	stats := flag.String("stats", "", "optional HTTP address for GET /count")
	reply := flag.String("reply", "empty", "BeforeCreateGroup's reply: empty (allow) or modify (the sample reply)")
	flag.Parse()
	switch *reply {
	case "empty":
	case "modify":
		modify = true
	default:
		log.Fatalf("-reply is empty or modify, not %q", *reply)
	}

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterGroupCallbackServiceServer(srv, groups{})
	hs := health.NewServer()
	hs.SetServingStatus("openim.callback.v1.GroupCallbackService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	if *stats != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]int64{"before": before.Load(), "after": after.Load()})
		})
		go func() { log.Fatal(http.ListenAndServe(*stats, mux)) }()
	}
	log.Printf("upstream listening on %s", lis.Addr())
	log.Fatal(srv.Serve(lis))
}
