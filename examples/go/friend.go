package main

import (
	"context"

	"google.golang.org/protobuf/proto"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// friendHooks implements FriendCallbackService; unwritten RPCs answer UNIMPLEMENTED.
type friendHooks struct {
	pb.UnimplementedFriendCallbackServiceServer
}

// BeforeSetFriendRemark masks blocked words in a friend remark.
func (friendHooks) BeforeSetFriendRemark(_ context.Context, req *pb.BeforeSetFriendRemarkRequest) (*pb.BeforeSetFriendRemarkResponse, error) {
	if masked := maskWords(req.GetRemark()); masked != req.GetRemark() {
		return &pb.BeforeSetFriendRemarkResponse{Remark: proto.String(masked)}, nil
	}
	return &pb.BeforeSetFriendRemarkResponse{}, nil
}

func (friendHooks) AfterAddFriend(ctx context.Context, _ *pb.AfterAddFriendRequest) (*pb.AfterAddFriendResponse, error) {
	return after[pb.AfterAddFriendResponse](ctx)
}

func (friendHooks) AfterAddFriendAgree(ctx context.Context, _ *pb.AfterAddFriendAgreeRequest) (*pb.AfterAddFriendAgreeResponse, error) {
	return after[pb.AfterAddFriendAgreeResponse](ctx)
}

func (friendHooks) AfterDeleteFriend(ctx context.Context, _ *pb.AfterDeleteFriendRequest) (*pb.AfterDeleteFriendResponse, error) {
	return after[pb.AfterDeleteFriendResponse](ctx)
}

func (friendHooks) AfterImportFriends(ctx context.Context, _ *pb.AfterImportFriendsRequest) (*pb.AfterImportFriendsResponse, error) {
	return after[pb.AfterImportFriendsResponse](ctx)
}

func (friendHooks) AfterRemoveBlack(ctx context.Context, _ *pb.AfterRemoveBlackRequest) (*pb.AfterRemoveBlackResponse, error) {
	return after[pb.AfterRemoveBlackResponse](ctx)
}

func (friendHooks) AfterSetFriendRemark(ctx context.Context, _ *pb.AfterSetFriendRemarkRequest) (*pb.AfterSetFriendRemarkResponse, error) {
	return after[pb.AfterSetFriendRemarkResponse](ctx)
}
