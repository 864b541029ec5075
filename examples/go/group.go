package main

import (
	"context"

	"google.golang.org/protobuf/proto"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// groupHooks implements GroupCallbackService; unwritten RPCs answer UNIMPLEMENTED.
type groupHooks struct {
	pb.UnimplementedGroupCallbackServiceServer
}

// BeforeCreateGroup rejects a group name with a blocked word, and tags a new group that has no
// `ex` with where it was created.
func (groupHooks) BeforeCreateGroup(_ context.Context, req *pb.BeforeCreateGroupRequest) (*pb.BeforeCreateGroupResponse, error) {
	if word := blockedWord(req.GetGroupName()); word != "" {
		return &pb.BeforeCreateGroupResponse{Rejection: reject("group name contains a blocked word", word)}, nil
	}
	if req.GetEx() == "" {
		// A set optional field replaces OpenIM's value; every unset one keeps it.
		return &pb.BeforeCreateGroupResponse{Ex: proto.String(groupTag)}, nil
	}
	return &pb.BeforeCreateGroupResponse{}, nil
}

func (groupHooks) AfterCreateGroup(ctx context.Context, _ *pb.AfterCreateGroupRequest) (*pb.AfterCreateGroupResponse, error) {
	return after[pb.AfterCreateGroupResponse](ctx)
}

func (groupHooks) AfterSetGroupMemberInfo(ctx context.Context, _ *pb.AfterSetGroupMemberInfoRequest) (*pb.AfterSetGroupMemberInfoResponse, error) {
	return after[pb.AfterSetGroupMemberInfoResponse](ctx)
}

func (groupHooks) AfterQuitGroup(ctx context.Context, _ *pb.AfterQuitGroupRequest) (*pb.AfterQuitGroupResponse, error) {
	return after[pb.AfterQuitGroupResponse](ctx)
}

func (groupHooks) AfterKickGroup(ctx context.Context, _ *pb.AfterKickGroupRequest) (*pb.AfterKickGroupResponse, error) {
	return after[pb.AfterKickGroupResponse](ctx)
}

func (groupHooks) AfterDismissGroup(ctx context.Context, _ *pb.AfterDismissGroupRequest) (*pb.AfterDismissGroupResponse, error) {
	return after[pb.AfterDismissGroupResponse](ctx)
}

func (groupHooks) AfterTransferGroupOwner(ctx context.Context, _ *pb.AfterTransferGroupOwnerRequest) (*pb.AfterTransferGroupOwnerResponse, error) {
	return after[pb.AfterTransferGroupOwnerResponse](ctx)
}

func (groupHooks) AfterJoinGroup(ctx context.Context, _ *pb.AfterJoinGroupRequest) (*pb.AfterJoinGroupResponse, error) {
	return after[pb.AfterJoinGroupResponse](ctx)
}

func (groupHooks) AfterSetGroupInfo(ctx context.Context, _ *pb.AfterSetGroupInfoRequest) (*pb.AfterSetGroupInfoResponse, error) {
	return after[pb.AfterSetGroupInfoResponse](ctx)
}

func (groupHooks) AfterSetGroupInfoEx(ctx context.Context, _ *pb.AfterSetGroupInfoExRequest) (*pb.AfterSetGroupInfoExResponse, error) {
	return after[pb.AfterSetGroupInfoExResponse](ctx)
}
