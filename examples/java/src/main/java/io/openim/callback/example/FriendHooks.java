package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.AfterAddFriendAgreeRequest;
import io.openim.callback.v1.AfterAddFriendAgreeResponse;
import io.openim.callback.v1.AfterAddFriendRequest;
import io.openim.callback.v1.AfterAddFriendResponse;
import io.openim.callback.v1.AfterDeleteFriendRequest;
import io.openim.callback.v1.AfterDeleteFriendResponse;
import io.openim.callback.v1.AfterImportFriendsRequest;
import io.openim.callback.v1.AfterImportFriendsResponse;
import io.openim.callback.v1.AfterRemoveBlackRequest;
import io.openim.callback.v1.AfterRemoveBlackResponse;
import io.openim.callback.v1.AfterSetFriendRemarkRequest;
import io.openim.callback.v1.AfterSetFriendRemarkResponse;
import io.openim.callback.v1.BeforeSetFriendRemarkRequest;
import io.openim.callback.v1.BeforeSetFriendRemarkResponse;
import io.openim.callback.v1.FriendCallbackServiceGrpc;
import java.util.Optional;

/** Friend callbacks: mask blocked words in friend remarks. */
final class FriendHooks extends FriendCallbackServiceGrpc.FriendCallbackServiceImplBase {

  @Override
  public void beforeSetFriendRemark(
      BeforeSetFriendRemarkRequest request, StreamObserver<BeforeSetFriendRemarkResponse> reply) {
    Optional<String> masked = Policy.mask(request.getRemark());
    if (masked.isPresent()) {
      BeforeSetFriendRemarkResponse response =
          BeforeSetFriendRemarkResponse.newBuilder().setRemark(masked.get()).build();
      Hooks.decide(reply, response, "modify (blocked words masked)");
      return;
    }
    Hooks.decide(reply, BeforeSetFriendRemarkResponse.getDefaultInstance(), "allow");
  }

  // After callbacks: notifications, acknowledged at once.

  @Override
  public void afterAddFriend(
      AfterAddFriendRequest request, StreamObserver<AfterAddFriendResponse> reply) {
    Hooks.after(reply, AfterAddFriendResponse.getDefaultInstance());
  }

  @Override
  public void afterAddFriendAgree(
      AfterAddFriendAgreeRequest request, StreamObserver<AfterAddFriendAgreeResponse> reply) {
    Hooks.after(reply, AfterAddFriendAgreeResponse.getDefaultInstance());
  }

  @Override
  public void afterDeleteFriend(
      AfterDeleteFriendRequest request, StreamObserver<AfterDeleteFriendResponse> reply) {
    Hooks.after(reply, AfterDeleteFriendResponse.getDefaultInstance());
  }

  @Override
  public void afterImportFriends(
      AfterImportFriendsRequest request, StreamObserver<AfterImportFriendsResponse> reply) {
    Hooks.after(reply, AfterImportFriendsResponse.getDefaultInstance());
  }

  @Override
  public void afterRemoveBlack(
      AfterRemoveBlackRequest request, StreamObserver<AfterRemoveBlackResponse> reply) {
    Hooks.after(reply, AfterRemoveBlackResponse.getDefaultInstance());
  }

  @Override
  public void afterSetFriendRemark(
      AfterSetFriendRemarkRequest request, StreamObserver<AfterSetFriendRemarkResponse> reply) {
    Hooks.after(reply, AfterSetFriendRemarkResponse.getDefaultInstance());
  }
}
