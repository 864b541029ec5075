package main

import (
	"context"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// conversationHooks implements ConversationCallbackService: only the after-events; the before
// RPCs answer UNIMPLEMENTED, so conversations are created with OpenIM's settings.
type conversationHooks struct {
	pb.UnimplementedConversationCallbackServiceServer
}

func (conversationHooks) AfterCreateSingleChatConversations(ctx context.Context, _ *pb.AfterCreateSingleChatConversationsRequest) (*pb.AfterCreateSingleChatConversationsResponse, error) {
	return after[pb.AfterCreateSingleChatConversationsResponse](ctx)
}

func (conversationHooks) AfterCreateGroupChatConversations(ctx context.Context, _ *pb.AfterCreateGroupChatConversationsRequest) (*pb.AfterCreateGroupChatConversationsResponse, error) {
	return after[pb.AfterCreateGroupChatConversationsResponse](ctx)
}
