package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.AfterGroupMsgReadRequest;
import io.openim.callback.v1.AfterGroupMsgReadResponse;
import io.openim.callback.v1.AfterMsgSaveDBRequest;
import io.openim.callback.v1.AfterMsgSaveDBResponse;
import io.openim.callback.v1.AfterRevokeMsgRequest;
import io.openim.callback.v1.AfterRevokeMsgResponse;
import io.openim.callback.v1.AfterSendGroupMsgRequest;
import io.openim.callback.v1.AfterSendGroupMsgResponse;
import io.openim.callback.v1.AfterSendSingleMsgRequest;
import io.openim.callback.v1.AfterSendSingleMsgResponse;
import io.openim.callback.v1.AfterSingleMsgReadRequest;
import io.openim.callback.v1.AfterSingleMsgReadResponse;
import io.openim.callback.v1.BeforeMsgModifyRequest;
import io.openim.callback.v1.BeforeMsgModifyResponse;
import io.openim.callback.v1.BeforeSendGroupMsgRequest;
import io.openim.callback.v1.BeforeSendGroupMsgResponse;
import io.openim.callback.v1.BeforeSendSingleMsgRequest;
import io.openim.callback.v1.BeforeSendSingleMsgResponse;
import io.openim.callback.v1.MessageCallbackServiceGrpc;
import java.util.Optional;

/** Message callbacks: reject messages with a blocked word, mask them in edited messages. */
final class MessageHooks extends MessageCallbackServiceGrpc.MessageCallbackServiceImplBase {

  @Override
  public void beforeSendSingleMsg(
      BeforeSendSingleMsgRequest request, StreamObserver<BeforeSendSingleMsgResponse> reply) {
    Optional<String> word = Policy.blockedWord(request.getContent());
    if (word.isPresent()) {
      BeforeSendSingleMsgResponse response =
          BeforeSendSingleMsgResponse.newBuilder()
              .setRejection(Hooks.rejection("message contains a blocked word", word.get()))
              .build();
      Hooks.decide(reply, response, "reject (" + word.get() + ")");
      return;
    }
    // The empty response allows: every unset field means "keep OpenIM's value".
    Hooks.decide(reply, BeforeSendSingleMsgResponse.getDefaultInstance(), "allow");
  }

  @Override
  public void beforeSendGroupMsg(
      BeforeSendGroupMsgRequest request, StreamObserver<BeforeSendGroupMsgResponse> reply) {
    Optional<String> word = Policy.blockedWord(request.getContent());
    if (word.isPresent()) {
      BeforeSendGroupMsgResponse response =
          BeforeSendGroupMsgResponse.newBuilder()
              .setRejection(Hooks.rejection("message contains a blocked word", word.get()))
              .build();
      Hooks.decide(reply, response, "reject (" + word.get() + ")");
      return;
    }
    Hooks.decide(reply, BeforeSendGroupMsgResponse.getDefaultInstance(), "allow");
  }

  @Override
  public void beforeMsgModify(
      BeforeMsgModifyRequest request, StreamObserver<BeforeMsgModifyResponse> reply) {
    Optional<String> masked = Policy.maskJsonObject(request.getContent());
    if (masked.isPresent()) {
      // A modification sets only the fields to change (`content` is `optional` in the proto, so
      // setting it is what tells the gateway to replace it).
      BeforeMsgModifyResponse response =
          BeforeMsgModifyResponse.newBuilder().setContent(masked.get()).build();
      Hooks.decide(reply, response, "modify (blocked words masked)");
      return;
    }
    Hooks.decide(reply, BeforeMsgModifyResponse.getDefaultInstance(), "allow");
  }

  // After callbacks: notifications, acknowledged at once.

  @Override
  public void afterSendSingleMsg(
      AfterSendSingleMsgRequest request, StreamObserver<AfterSendSingleMsgResponse> reply) {
    Hooks.after(reply, AfterSendSingleMsgResponse.getDefaultInstance());
  }

  @Override
  public void afterSendGroupMsg(
      AfterSendGroupMsgRequest request, StreamObserver<AfterSendGroupMsgResponse> reply) {
    Hooks.after(reply, AfterSendGroupMsgResponse.getDefaultInstance());
  }

  @Override
  public void afterMsgSaveDB(
      AfterMsgSaveDBRequest request, StreamObserver<AfterMsgSaveDBResponse> reply) {
    Hooks.after(reply, AfterMsgSaveDBResponse.getDefaultInstance());
  }

  @Override
  public void afterGroupMsgRead(
      AfterGroupMsgReadRequest request, StreamObserver<AfterGroupMsgReadResponse> reply) {
    Hooks.after(reply, AfterGroupMsgReadResponse.getDefaultInstance());
  }

  @Override
  public void afterSingleMsgRead(
      AfterSingleMsgReadRequest request, StreamObserver<AfterSingleMsgReadResponse> reply) {
    Hooks.after(reply, AfterSingleMsgReadResponse.getDefaultInstance());
  }

  /** OpenIM sends this one as callbackBeforeAfterMsgCommand (sic). */
  @Override
  public void afterRevokeMsg(
      AfterRevokeMsgRequest request, StreamObserver<AfterRevokeMsgResponse> reply) {
    Hooks.after(reply, AfterRevokeMsgResponse.getDefaultInstance());
  }
}
