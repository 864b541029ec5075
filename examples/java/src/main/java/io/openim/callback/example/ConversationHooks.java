package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.AfterCreateGroupChatConversationsRequest;
import io.openim.callback.v1.AfterCreateGroupChatConversationsResponse;
import io.openim.callback.v1.AfterCreateSingleChatConversationsRequest;
import io.openim.callback.v1.AfterCreateSingleChatConversationsResponse;
import io.openim.callback.v1.ConversationCallbackServiceGrpc;

/**
 * Conversation callbacks: the before ones are left to the generated base (UNIMPLEMENTED, which the
 * gateway takes as "continue unchanged").
 */
final class ConversationHooks
    extends ConversationCallbackServiceGrpc.ConversationCallbackServiceImplBase {

  // After callbacks: notifications, acknowledged at once.

  @Override
  public void afterCreateSingleChatConversations(
      AfterCreateSingleChatConversationsRequest request, StreamObserver<AfterCreateSingleChatConversationsResponse> reply) {
    Hooks.after(reply, AfterCreateSingleChatConversationsResponse.getDefaultInstance());
  }

  @Override
  public void afterCreateGroupChatConversations(
      AfterCreateGroupChatConversationsRequest request, StreamObserver<AfterCreateGroupChatConversationsResponse> reply) {
    Hooks.after(reply, AfterCreateGroupChatConversationsResponse.getDefaultInstance());
  }
}
