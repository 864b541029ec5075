package main

import (
	"context"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// gRPC metadata keys the gateway sends (README.md lists them all). It also sends
// openim-key (the `key` query parameter, when present) and, on spooled after-events,
// openim-delivery-attempt (1, 2, ...).
const (
	mdOperationID     = "openim-operation-id"     // OpenIM's operationID
	mdCallbackCommand = "openim-callback-command" // e.g. callbackBeforeSendSingleMsgCommand
	// Only on spooled after-events: stays the same across retries, so a handler can use it to
	// be idempotent.
	mdDeliveryID = "openim-delivery-id"
)

// meta returns the first value of the metadata key, or "-" when the gateway did not send it
// (for example a `delivery: sync` after-event has no delivery id).
func meta(ctx context.Context, key string) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(key); len(v) > 0 && v[0] != "" {
		return v[0]
	}
	return "-"
}

// after acknowledges an after-event (a notification: OpenIM ignores the reply) by printing
//
//	after <openim-callback-command> <openim-delivery-id>
//
// on stdout and returning the empty response T. Returning an error instead would make the
// gateway retry a spooled delivery.
func after[T any](ctx context.Context) (*T, error) {
	stdout.Printf("after %s %s", meta(ctx, mdCallbackCommand), meta(ctx, mdDeliveryID))
	return new(T), nil
}

// reject is the rejection every policy uses. Returned as the `rejection` field of a normal OK
// response, the gateway answers OpenIM with `nextCode 1` and the client sees code, message and
// detail as its error.
func reject(message, word string) *pb.Rejection {
	return &pb.Rejection{Code: rejectCode, Message: message, Detail: word}
}

// logBeforeCalls logs every before-callback with OpenIM's operation id and the decision, to
// stderr. Deciding from the response keeps the handlers free of logging: a rejection is set, or
// some field is set (a modification), or nothing is (allow); an error such as UNIMPLEMENTED makes
// the gateway continue unchanged.
func logBeforeCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	if !strings.HasPrefix(method, "Before") {
		return resp, err
	}
	decision := "allow"
	if err != nil {
		decision = "error: " + status.Code(err).String()
	} else if r, ok := resp.(interface{ GetRejection() *pb.Rejection }); ok && r.GetRejection() != nil {
		decision = "reject: " + r.GetRejection().GetMessage()
	} else if m, ok := resp.(proto.Message); ok && proto.Size(m) > 0 {
		decision = "modify"
	}
	slog.Info("before-callback", "method", method, "operation_id", meta(ctx, mdOperationID),
		"command", meta(ctx, mdCallbackCommand), "decision", decision)
	return resp, err
}
