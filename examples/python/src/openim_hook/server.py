"""Serves the example hook on 127.0.0.1:PORT with grpc.aio, plus health and reflection.

Usage: python -m openim_hook PORT
"""

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from openim.callback.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    friend_pb2,
    friend_pb2_grpc,
    group_pb2,
    group_pb2_grpc,
    message_pb2,
    message_pb2_grpc,
    push_pb2,
    push_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

from . import services

# (generated registration function, our servicer, the service's full proto name)
SERVICES = [
    (
        message_pb2_grpc.add_MessageCallbackServiceServicer_to_server,
        services.MessageHooks(),
        message_pb2.DESCRIPTOR.services_by_name["MessageCallbackService"].full_name,
    ),
    (
        push_pb2_grpc.add_PushCallbackServiceServicer_to_server,
        services.PushHooks(),
        push_pb2.DESCRIPTOR.services_by_name["PushCallbackService"].full_name,
    ),
    (
        user_pb2_grpc.add_UserCallbackServiceServicer_to_server,
        services.UserHooks(),
        user_pb2.DESCRIPTOR.services_by_name["UserCallbackService"].full_name,
    ),
    (
        friend_pb2_grpc.add_FriendCallbackServiceServicer_to_server,
        services.FriendHooks(),
        friend_pb2.DESCRIPTOR.services_by_name["FriendCallbackService"].full_name,
    ),
    (
        group_pb2_grpc.add_GroupCallbackServiceServicer_to_server,
        services.GroupHooks(),
        group_pb2.DESCRIPTOR.services_by_name["GroupCallbackService"].full_name,
    ),
    (
        conversation_pb2_grpc.add_ConversationCallbackServiceServicer_to_server,
        services.ConversationHooks(),
        conversation_pb2.DESCRIPTOR.services_by_name["ConversationCallbackService"].full_name,
    ),
]


class _HideUnimplemented(logging.Filter):
    """Drops grpc.aio's traceback for the RPCs we leave unimplemented.

    The generated base methods set UNIMPLEMENTED and raise NotImplementedError; grpc.aio answers
    with that status (what we want: the gateway continues unchanged) but also logs the exception
    as an error, which here is expected, not a failure.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], NotImplementedError))


async def serve(port: int) -> None:
    server = grpc.aio.server()
    for add_to_server, servicer, _ in SERVICES:
        add_to_server(servicer, server)
    names = [name for _, _, name in SERVICES]

    # grpc.health.v1: SERVING for the whole server ("") and for each callback service.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    # Server reflection, so `grpcurl -plaintext 127.0.0.1:PORT list` works without the protos.
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    address = f"127.0.0.1:{port}"
    server.add_insecure_port(address)  # raises RuntimeError if the port cannot be bound
    await server.start()
    print(f"listening on {address}", flush=True)

    # Stop on SIGTERM / SIGINT: report NOT_SERVING, finish the calls in flight, then return, so the
    # process exits 0.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logging.getLogger(__name__).info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)


def main() -> None:
    # Logs go to stderr; stdout carries only `listening on ...` and the `after ...` lines.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("grpc._cython.cygrpc").addFilter(_HideUnimplemented())
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m openim_hook PORT")
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
