package io.openim.callback.example;

import io.grpc.BindableService;
import io.grpc.Server;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.protobuf.services.HealthStatusManager;
import io.grpc.protobuf.services.ProtoReflectionServiceV1;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The example OpenIM hook service: the six callback services of {@code openim.callback.v1}, plus
 * {@code grpc.health.v1.Health} and server reflection, on 127.0.0.1:PORT.
 *
 * <p>Usage: {@code java -jar target/openim-hook-example.jar PORT}
 */
public final class HookServer {
  private HookServer() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: java -jar openim-hook-example.jar PORT");
      System.exit(2);
    }
    int port = Integer.parseInt(args[0]);

    List<BindableService> hooks =
        List.of(
            new MessageHooks(),
            new PushHooks(),
            new UserHooks(),
            new FriendHooks(),
            new GroupHooks(),
            new ConversationHooks());

    // SERVING for "" from the start; each callback service is added below.
    HealthStatusManager health = new HealthStatusManager();
    // Loopback only: the gateway runs beside the hook service. Bind 0.0.0.0 to serve others.
    NettyServerBuilder builder =
        NettyServerBuilder.forAddress(
                new InetSocketAddress(InetAddress.getLoopbackAddress(), port))
            // Runs for every call: makes the gateway's metadata available as OpenImCall.current().
            .intercept(new OpenImCall.Interceptor())
            .addService(health.getHealthService())
            .addService(ProtoReflectionServiceV1.newInstance());
    for (BindableService hook : hooks) {
      builder.addService(hook);
      health.setStatus(
          hook.bindService().getServiceDescriptor().getName(), ServingStatus.SERVING);
    }
    Server server = builder.build().start();

    // SIGTERM and SIGINT run the JVM's shutdown hooks: report NOT_SERVING, stop taking calls and
    // let the ones in flight finish (5 s at most).
    Runtime.getRuntime().addShutdownHook(new Thread(() -> stop(server, health), "grpc-shutdown"));

    // The readiness line: the first thing on stdout.
    System.out.println("listening on 127.0.0.1:" + server.getPort());
    System.out.flush();
    server.awaitTermination();
  }

  private static void stop(Server server, HealthStatusManager health) {
    health.enterTerminalState();
    server.shutdown();
    try {
      if (!server.awaitTermination(5, TimeUnit.SECONDS)) {
        server.shutdownNow();
      }
    } catch (InterruptedException e) {
      server.shutdownNow();
    }
    // A stop on request is a normal end: exit 0, as the other example services do, rather than
    // the JVM's 128 + signal number (143 for SIGTERM, 130 for SIGINT).
    Runtime.getRuntime().halt(0);
  }
}
