package main

import (
	"context"

	"google.golang.org/protobuf/proto"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// messageHooks implements MessageCallbackService. Embedding the Unimplemented server (by value,
// as protoc-gen-go-grpc asks) answers every RPC not written here with UNIMPLEMENTED, which the
// gateway treats as "continue unchanged".
type messageHooks struct {
	pb.UnimplementedMessageCallbackServiceServer
}

// BeforeSendSingleMsg rejects a one-to-one message whose content contains a blocked word.
func (messageHooks) BeforeSendSingleMsg(_ context.Context, req *pb.BeforeSendSingleMsgRequest) (*pb.BeforeSendSingleMsgResponse, error) {
	if word := blockedWord(req.GetContent()); word != "" {
		return &pb.BeforeSendSingleMsgResponse{Rejection: reject("message contains a blocked word", word)}, nil
	}
	return &pb.BeforeSendSingleMsgResponse{}, nil // empty response: allow
}

// BeforeSendGroupMsg applies the same rule to group messages.
func (messageHooks) BeforeSendGroupMsg(_ context.Context, req *pb.BeforeSendGroupMsgRequest) (*pb.BeforeSendGroupMsgResponse, error) {
	if word := blockedWord(req.GetContent()); word != "" {
		return &pb.BeforeSendGroupMsgResponse{Rejection: reject("message contains a blocked word", word)}, nil
	}
	return &pb.BeforeSendGroupMsgResponse{}, nil
}

// BeforeMsgModify masks blocked words inside the message content (a JSON object string). Only
// the fields set in the response change; content stays a JSON object, as OpenIM requires.
func (messageHooks) BeforeMsgModify(_ context.Context, req *pb.BeforeMsgModifyRequest) (*pb.BeforeMsgModifyResponse, error) {
	if content, changed := maskContent(req.GetContent()); changed {
		return &pb.BeforeMsgModifyResponse{Content: proto.String(content)}, nil
	}
	return &pb.BeforeMsgModifyResponse{}, nil
}

func (messageHooks) AfterSendSingleMsg(ctx context.Context, _ *pb.AfterSendSingleMsgRequest) (*pb.AfterSendSingleMsgResponse, error) {
	return after[pb.AfterSendSingleMsgResponse](ctx)
}

func (messageHooks) AfterSendGroupMsg(ctx context.Context, _ *pb.AfterSendGroupMsgRequest) (*pb.AfterSendGroupMsgResponse, error) {
	return after[pb.AfterSendGroupMsgResponse](ctx)
}

func (messageHooks) AfterMsgSaveDB(ctx context.Context, _ *pb.AfterMsgSaveDBRequest) (*pb.AfterMsgSaveDBResponse, error) {
	return after[pb.AfterMsgSaveDBResponse](ctx)
}

func (messageHooks) AfterGroupMsgRead(ctx context.Context, _ *pb.AfterGroupMsgReadRequest) (*pb.AfterGroupMsgReadResponse, error) {
	return after[pb.AfterGroupMsgReadResponse](ctx)
}

func (messageHooks) AfterSingleMsgRead(ctx context.Context, _ *pb.AfterSingleMsgReadRequest) (*pb.AfterSingleMsgReadResponse, error) {
	return after[pb.AfterSingleMsgReadResponse](ctx)
}

// AfterRevokeMsg arrives with the command callbackBeforeAfterMsgCommand (OpenIM's own name).
func (messageHooks) AfterRevokeMsg(ctx context.Context, _ *pb.AfterRevokeMsgRequest) (*pb.AfterRevokeMsgResponse, error) {
	return after[pb.AfterRevokeMsgResponse](ctx)
}
