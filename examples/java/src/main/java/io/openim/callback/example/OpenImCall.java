package io.openim.callback.example;

import io.grpc.Context;
import io.grpc.Contexts;
import io.grpc.Metadata;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;

/**
 * What the gateway tells about the OpenIM callback behind a gRPC call, taken from its metadata.
 *
 * <p>A handler reads it with {@link #current()}: {@link Interceptor} puts it into the call's
 * {@link Context}, which grpc-java makes current while the handler runs.
 *
 * @param operationId OpenIM's operationID ({@code openim-operation-id}), for log correlation
 * @param command the callback command ({@code openim-callback-command}), e.g.
 *     callbackBeforeSendSingleMsgCommand
 * @param key the {@code key} query parameter of the callback URL ({@code openim-key}), if any
 * @param deliveryId the id of a spooled after-event ({@code openim-delivery-id}): it stays the same
 *     across retries, so use it to handle an event only once. Absent for {@code delivery: sync}.
 * @param deliveryAttempt which attempt this is ({@code openim-delivery-attempt}, from 1); 0 when
 *     the event is not spooled
 */
public record OpenImCall(
    String operationId, String command, String key, String deliveryId, int deliveryAttempt) {

  private static final Metadata.Key<String> OPERATION_ID = header("openim-operation-id");
  private static final Metadata.Key<String> COMMAND = header("openim-callback-command");
  private static final Metadata.Key<String> KEY = header("openim-key");
  private static final Metadata.Key<String> DELIVERY_ID = header("openim-delivery-id");
  private static final Metadata.Key<String> DELIVERY_ATTEMPT = header("openim-delivery-attempt");

  private static final Context.Key<OpenImCall> CURRENT = Context.key("openim-call");

  /** The OpenIM call being handled; every value absent outside a call. */
  public static OpenImCall current() {
    OpenImCall call = CURRENT.get();
    return call != null ? call : new OpenImCall(null, null, null, null, 0);
  }

  /** Reads the gateway's metadata of every call into the call's {@link Context}. */
  public static final class Interceptor implements ServerInterceptor {
    @Override
    public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
        ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
      OpenImCall openIm =
          new OpenImCall(
              headers.get(OPERATION_ID),
              headers.get(COMMAND),
              headers.get(KEY),
              headers.get(DELIVERY_ID),
              attempt(headers.get(DELIVERY_ATTEMPT)));
      return Contexts.interceptCall(
          Context.current().withValue(CURRENT, openIm), call, headers, next);
    }

    private static int attempt(String value) {
      try {
        return value == null ? 0 : Integer.parseInt(value);
      } catch (NumberFormatException e) {
        return 0;
      }
    }
  }

  private static Metadata.Key<String> header(String name) {
    return Metadata.Key.of(name, Metadata.ASCII_STRING_MARSHALLER);
  }
}
