"""An echo bot behind the gateway: it gets the messages addressed to it (the gateway's bot preset
holds back everything else, its own messages included) and answers into the same conversation
through OpenIM's `POST /msg/send_simple_msg?key=<openim-key>`, as OpenIM's own bot flow does.

Usage: python -m openim_hook.bot PORT
Environment: OPENIM_API (e.g. http://openim-server:10002), OPENIM_ADMIN_TOKEN (an app-manager
token: send_simple_msg is an admin API), BOT_ID (the bot's user ID, the sender in groups).

Gateway config (the bot preset):
    bots: [bot_1]
    defaults:
      only: {to_bots: true, content_types: [101, 106]}
      skip: {from_bots: true, notifications: true}
"""

import asyncio
import json
import logging
import os
import signal
import sys
import urllib.request
import uuid

import grpc

from openim.callback.v1 import message_pb2, message_pb2_grpc

log = logging.getLogger("openim_bot")


def _metadata(context, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v
    return ""


def _text(content: str) -> str:
    """OpenIM's text content is a JSON object string: {"content": "..."}; @-text has `text`."""
    try:
        value = json.loads(content)
    except ValueError:
        return content
    return value.get("content") or value.get("text") or ""


def reply(key: str, text: str) -> None:
    """Sends `text` into the conversation the `key` names (blocking; run in a thread)."""
    api = os.environ["OPENIM_API"].rstrip("/")
    body = json.dumps({"sendID": os.environ.get("BOT_ID", ""), "content": text}).encode()
    request = urllib.request.Request(
        f"{api}/msg/send_simple_msg?key={urllib.parse.quote(key, safe='')}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "token": os.environ.get("OPENIM_ADMIN_TOKEN", ""),
            "operationID": uuid.uuid4().hex,
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()


class EchoBot(message_pb2_grpc.MessageCallbackServiceServicer):
    async def _answer(self, request, context, response):
        key = _metadata(context, "openim-key")
        if not key:
            log.warning("no openim-key metadata: OpenIM (v3.8.3 and older) sent none; not answering")
            return response
        text = _text(request.content)
        conversation = _metadata(context, "openim-conversation-id")
        log.info("message for the bot in %s: answering", conversation)
        # A failed reply is an error of this delivery: the gateway's spool retries it.
        await asyncio.to_thread(reply, key, f"echo: {text}")
        return response

    async def AfterSendSingleMsg(self, request, context):
        return await self._answer(request, context, message_pb2.AfterSendSingleMsgResponse())

    async def AfterSendGroupMsg(self, request, context):
        return await self._answer(request, context, message_pb2.AfterSendGroupMsgResponse())


async def serve(port: int) -> None:
    server = grpc.aio.server()
    message_pb2_grpc.add_MessageCallbackServiceServicer_to_server(EchoBot(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))


if __name__ == "__main__":
    main()
