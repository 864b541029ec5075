package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.AfterUpdateUserInfoExRequest;
import io.openim.callback.v1.AfterUpdateUserInfoExResponse;
import io.openim.callback.v1.AfterUpdateUserInfoRequest;
import io.openim.callback.v1.AfterUpdateUserInfoResponse;
import io.openim.callback.v1.AfterUserKickOffRequest;
import io.openim.callback.v1.AfterUserKickOffResponse;
import io.openim.callback.v1.AfterUserOfflineRequest;
import io.openim.callback.v1.AfterUserOfflineResponse;
import io.openim.callback.v1.AfterUserOnlineRequest;
import io.openim.callback.v1.AfterUserOnlineResponse;
import io.openim.callback.v1.AfterUserRegisterRequest;
import io.openim.callback.v1.AfterUserRegisterResponse;
import io.openim.callback.v1.BeforeUserRegisterRequest;
import io.openim.callback.v1.BeforeUserRegisterResponse;
import io.openim.callback.v1.UserCallbackServiceGrpc;
import io.openim.callback.v1.UserInfo;

/** User callbacks: give new users without an avatar the default one. */
final class UserHooks extends UserCallbackServiceGrpc.UserCallbackServiceImplBase {

  @Override
  public void beforeUserRegister(
      BeforeUserRegisterRequest request, StreamObserver<BeforeUserRegisterResponse> reply) {
    if (request.getUsersList().stream().noneMatch(user -> user.getFaceUrl().isEmpty())) {
      Hooks.decide(reply, BeforeUserRegisterResponse.getDefaultInstance(), "allow");
      return;
    }
    // OpenIM replaces the whole list with the reply's, so send every user, changed or not.
    BeforeUserRegisterResponse.Builder response = BeforeUserRegisterResponse.newBuilder();
    for (UserInfo user : request.getUsersList()) {
      response.addUsers(
          user.getFaceUrl().isEmpty()
              ? user.toBuilder().setFaceUrl(Policy.DEFAULT_AVATAR).build()
              : user);
    }
    Hooks.decide(reply, response.build(), "modify (default avatar)");
  }

  // After callbacks: notifications, acknowledged at once.

  @Override
  public void afterUpdateUserInfo(
      AfterUpdateUserInfoRequest request, StreamObserver<AfterUpdateUserInfoResponse> reply) {
    Hooks.after(reply, AfterUpdateUserInfoResponse.getDefaultInstance());
  }

  @Override
  public void afterUpdateUserInfoEx(
      AfterUpdateUserInfoExRequest request, StreamObserver<AfterUpdateUserInfoExResponse> reply) {
    Hooks.after(reply, AfterUpdateUserInfoExResponse.getDefaultInstance());
  }

  @Override
  public void afterUserRegister(
      AfterUserRegisterRequest request, StreamObserver<AfterUserRegisterResponse> reply) {
    Hooks.after(reply, AfterUserRegisterResponse.getDefaultInstance());
  }

  @Override
  public void afterUserOnline(
      AfterUserOnlineRequest request, StreamObserver<AfterUserOnlineResponse> reply) {
    Hooks.after(reply, AfterUserOnlineResponse.getDefaultInstance());
  }

  @Override
  public void afterUserOffline(
      AfterUserOfflineRequest request, StreamObserver<AfterUserOfflineResponse> reply) {
    Hooks.after(reply, AfterUserOfflineResponse.getDefaultInstance());
  }

  @Override
  public void afterUserKickOff(
      AfterUserKickOffRequest request, StreamObserver<AfterUserKickOffResponse> reply) {
    Hooks.after(reply, AfterUserKickOffResponse.getDefaultInstance());
  }
}
