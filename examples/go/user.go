package main

import (
	"context"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

// userHooks implements UserCallbackService; unwritten RPCs answer UNIMPLEMENTED.
type userHooks struct {
	pb.UnimplementedUserCallbackServiceServer
}

// BeforeUserRegister gives the default avatar to every new user without one. A non-empty
// `users` reply replaces OpenIM's whole list, so it returns all the users, changed or not.
func (userHooks) BeforeUserRegister(_ context.Context, req *pb.BeforeUserRegisterRequest) (*pb.BeforeUserRegisterResponse, error) {
	changed := false
	for _, u := range req.GetUsers() {
		if u.GetFaceUrl() == "" {
			u.FaceUrl = defaultAvatar // the request is ours to edit: grpc decodes one per call
			changed = true
		}
	}
	if !changed {
		return &pb.BeforeUserRegisterResponse{}, nil
	}
	return &pb.BeforeUserRegisterResponse{Users: req.GetUsers()}, nil
}

func (userHooks) AfterUpdateUserInfo(ctx context.Context, _ *pb.AfterUpdateUserInfoRequest) (*pb.AfterUpdateUserInfoResponse, error) {
	return after[pb.AfterUpdateUserInfoResponse](ctx)
}

func (userHooks) AfterUpdateUserInfoEx(ctx context.Context, _ *pb.AfterUpdateUserInfoExRequest) (*pb.AfterUpdateUserInfoExResponse, error) {
	return after[pb.AfterUpdateUserInfoExResponse](ctx)
}

func (userHooks) AfterUserRegister(ctx context.Context, _ *pb.AfterUserRegisterRequest) (*pb.AfterUserRegisterResponse, error) {
	return after[pb.AfterUserRegisterResponse](ctx)
}

func (userHooks) AfterUserOnline(ctx context.Context, _ *pb.AfterUserOnlineRequest) (*pb.AfterUserOnlineResponse, error) {
	return after[pb.AfterUserOnlineResponse](ctx)
}

func (userHooks) AfterUserOffline(ctx context.Context, _ *pb.AfterUserOfflineRequest) (*pb.AfterUserOfflineResponse, error) {
	return after[pb.AfterUserOfflineResponse](ctx)
}

func (userHooks) AfterUserKickOff(ctx context.Context, _ *pb.AfterUserKickOffRequest) (*pb.AfterUserKickOffResponse, error) {
	return after[pb.AfterUserKickOffResponse](ctx)
}
