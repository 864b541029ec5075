package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.AfterCreateGroupRequest;
import io.openim.callback.v1.AfterCreateGroupResponse;
import io.openim.callback.v1.AfterDismissGroupRequest;
import io.openim.callback.v1.AfterDismissGroupResponse;
import io.openim.callback.v1.AfterJoinGroupRequest;
import io.openim.callback.v1.AfterJoinGroupResponse;
import io.openim.callback.v1.AfterKickGroupRequest;
import io.openim.callback.v1.AfterKickGroupResponse;
import io.openim.callback.v1.AfterQuitGroupRequest;
import io.openim.callback.v1.AfterQuitGroupResponse;
import io.openim.callback.v1.AfterSetGroupInfoExRequest;
import io.openim.callback.v1.AfterSetGroupInfoExResponse;
import io.openim.callback.v1.AfterSetGroupInfoRequest;
import io.openim.callback.v1.AfterSetGroupInfoResponse;
import io.openim.callback.v1.AfterSetGroupMemberInfoRequest;
import io.openim.callback.v1.AfterSetGroupMemberInfoResponse;
import io.openim.callback.v1.AfterTransferGroupOwnerRequest;
import io.openim.callback.v1.AfterTransferGroupOwnerResponse;
import io.openim.callback.v1.BeforeCreateGroupRequest;
import io.openim.callback.v1.BeforeCreateGroupResponse;
import io.openim.callback.v1.GroupCallbackServiceGrpc;
import java.util.Optional;

/** Group callbacks: reject group names with a blocked word, tag new groups in their {@code ex}. */
final class GroupHooks extends GroupCallbackServiceGrpc.GroupCallbackServiceImplBase {

  @Override
  public void beforeCreateGroup(
      BeforeCreateGroupRequest request, StreamObserver<BeforeCreateGroupResponse> reply) {
    Optional<String> word = Policy.blockedWord(request.getGroupName());
    if (word.isPresent()) {
      BeforeCreateGroupResponse response =
          BeforeCreateGroupResponse.newBuilder()
              .setRejection(Hooks.rejection("group name contains a blocked word", word.get()))
              .build();
      Hooks.decide(reply, response, "reject (" + word.get() + ")");
      return;
    }
    if (request.getEx().isEmpty()) {
      BeforeCreateGroupResponse response =
          BeforeCreateGroupResponse.newBuilder().setEx(Policy.GROUP_TAG).build();
      Hooks.decide(reply, response, "modify (ex tagged)");
      return;
    }
    Hooks.decide(reply, BeforeCreateGroupResponse.getDefaultInstance(), "allow");
  }

  // After callbacks: notifications, acknowledged at once.

  @Override
  public void afterCreateGroup(
      AfterCreateGroupRequest request, StreamObserver<AfterCreateGroupResponse> reply) {
    Hooks.after(reply, AfterCreateGroupResponse.getDefaultInstance());
  }

  @Override
  public void afterSetGroupMemberInfo(
      AfterSetGroupMemberInfoRequest request, StreamObserver<AfterSetGroupMemberInfoResponse> reply) {
    Hooks.after(reply, AfterSetGroupMemberInfoResponse.getDefaultInstance());
  }

  @Override
  public void afterQuitGroup(
      AfterQuitGroupRequest request, StreamObserver<AfterQuitGroupResponse> reply) {
    Hooks.after(reply, AfterQuitGroupResponse.getDefaultInstance());
  }

  @Override
  public void afterKickGroup(
      AfterKickGroupRequest request, StreamObserver<AfterKickGroupResponse> reply) {
    Hooks.after(reply, AfterKickGroupResponse.getDefaultInstance());
  }

  @Override
  public void afterDismissGroup(
      AfterDismissGroupRequest request, StreamObserver<AfterDismissGroupResponse> reply) {
    Hooks.after(reply, AfterDismissGroupResponse.getDefaultInstance());
  }

  @Override
  public void afterTransferGroupOwner(
      AfterTransferGroupOwnerRequest request, StreamObserver<AfterTransferGroupOwnerResponse> reply) {
    Hooks.after(reply, AfterTransferGroupOwnerResponse.getDefaultInstance());
  }

  @Override
  public void afterJoinGroup(
      AfterJoinGroupRequest request, StreamObserver<AfterJoinGroupResponse> reply) {
    Hooks.after(reply, AfterJoinGroupResponse.getDefaultInstance());
  }

  @Override
  public void afterSetGroupInfo(
      AfterSetGroupInfoRequest request, StreamObserver<AfterSetGroupInfoResponse> reply) {
    Hooks.after(reply, AfterSetGroupInfoResponse.getDefaultInstance());
  }

  @Override
  public void afterSetGroupInfoEx(
      AfterSetGroupInfoExRequest request, StreamObserver<AfterSetGroupInfoExResponse> reply) {
    Hooks.after(reply, AfterSetGroupInfoExResponse.getDefaultInstance());
  }
}
