package io.openim.callback.example;

import io.grpc.stub.StreamObserver;
import io.openim.callback.v1.Rejection;

/** What every hook does to answer: reply to a before callback, acknowledge an after callback. */
final class Hooks {
  private Hooks() {}

  /**
   * The rejection of a before callback. It goes in the response's {@code rejection} field of a
   * normal (OK) reply; the gateway turns it into OpenIM's {@code nextCode 1} envelope, and the user
   * gets {@code code} / {@code message} / {@code detail} as the error.
   */
  static Rejection rejection(String message, String blockedWord) {
    return Rejection.newBuilder()
        .setCode(Policy.REJECT_CODE)
        .setMessage(message)
        .setDetail(blockedWord)
        .build();
  }

  /**
   * Answers a before callback with {@code response} and logs the decision with OpenIM's
   * operationID (to stderr: stdout is for the after-event lines).
   */
  static <T> void decide(StreamObserver<T> reply, T response, String decision) {
    OpenImCall call = OpenImCall.current();
    System.err.printf(
        "%s operationID=%s: %s%n", orDash(call.command()), orDash(call.operationId()), decision);
    reply.onNext(response);
    reply.onCompleted();
  }

  /**
   * Handles an after callback (a notification: its reply changes nothing): prints
   * {@code after <command> <delivery-id>} and acknowledges with the empty response. A real hook
   * would enqueue the event, keyed by the delivery id so that a retried delivery is not handled
   * twice.
   */
  static <T> void after(StreamObserver<T> reply, T emptyResponse) {
    OpenImCall call = OpenImCall.current();
    System.out.println("after " + orDash(call.command()) + " " + orDash(call.deliveryId()));
    // One line per event, at once, even when stdout is a pipe.
    System.out.flush();
    reply.onNext(emptyResponse);
    reply.onCompleted();
  }

  private static String orDash(String value) {
    return value == null || value.isEmpty() ? "-" : value;
  }
}
