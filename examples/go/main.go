// Command openim-hook-example is an example OpenIM callback hook service: the gRPC upstream that
// openim-callback-gateway calls for every OpenIM webhook callback.
//
// It serves the six services of openim.callback.v1 (see the per-service files), the standard
// grpc.health.v1.Health service and server reflection, on the address given by -addr.
package main

import (
	"context"
	"flag"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// stdout carries the "listening on" line and one line per after-event. A log.Logger writes each
// line with a single, serialised Write, and os.Stdout is unbuffered, so every line is flushed at
// once and lines from concurrent RPCs never interleave.
var stdout = log.New(os.Stdout, "", 0)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "host:port to serve gRPC on")
	flag.Parse()
	// Diagnostics (the before-callback log) go to stderr, keeping stdout for the lines above.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	if err := run(*addr); err != nil {
		slog.Error("serve failed", "err", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}

	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(logBeforeCalls))
	pb.RegisterMessageCallbackServiceServer(srv, messageHooks{})
	pb.RegisterPushCallbackServiceServer(srv, pushHooks{})
	pb.RegisterUserCallbackServiceServer(srv, userHooks{})
	pb.RegisterFriendCallbackServiceServer(srv, friendHooks{})
	pb.RegisterGroupCallbackServiceServer(srv, groupHooks{})
	pb.RegisterConversationCallbackServiceServer(srv, conversationHooks{})

	// Health: SERVING for "" (the whole server, set by NewServer) and for each callback service,
	// so a probe can ask about either.
	hs := health.NewServer()
	for name := range srv.GetServiceInfo() {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(srv, hs)
	// Reflection lets grpcurl and similar tools list and call the services without the protos.
	reflection.Register(srv)

	// On SIGINT/SIGTERM: report NOT_SERVING, let in-flight calls finish, then exit 0.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		slog.Info("shutting down")
		hs.Shutdown()
		// GracefulStop waits for in-flight RPCs; do not wait forever for a stuck one.
		timer := time.AfterFunc(5*time.Second, srv.Stop)
		defer timer.Stop()
		srv.GracefulStop()
	}()

	// The socket is already listening: connections made from now on wait in the backlog until
	// Serve accepts them, so the line can be printed before Serve blocks.
	stdout.Printf("listening on %s", lis.Addr())
	return srv.Serve(lis)
}
