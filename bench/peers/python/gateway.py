"""A hand-written OpenIM callback gateway in Python (aiohttp + grpcio aio), as a team would write it
without openim-callback-gateway: the benchmark's Python peer.

It does the same mapping as the gateway for the commands it knows: route on the last path segment,
parse OpenIM's JSON into the generated request message (json_format, unknown keys ignored), call the
upstream with the operation id and command as metadata and a deadline, and map the reply (or the
error status) to OpenIM's envelope. After commands are called synchronously (the gateway's
`delivery: sync`); there is no spool. One process, the default asyncio loop, no access log.

Usage: python gateway.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
(the generated *_pb2 modules must be importable: bench/run.sh generates them into ./gen).
"""

import argparse
import json
import os
import sys

import grpc
from aiohttp import web
from google.protobuf import descriptor, json_format

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from openim.callback.v1 import group_pb2, group_pb2_grpc

REJECT_CODE = 20001
TIMEOUT_S = 3.0
REJECTING = {
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}
INT64 = {
    descriptor.FieldDescriptor.TYPE_INT64,
    descriptor.FieldDescriptor.TYPE_UINT64,
    descriptor.FieldDescriptor.TYPE_SINT64,
    descriptor.FieldDescriptor.TYPE_FIXED64,
    descriptor.FieldDescriptor.TYPE_SFIXED64,
}


def envelope(err_code=0, err_msg="", err_dlt="", next_code=0):
    return {"actionCode": 0, "errCode": err_code, "errMsg": err_msg, "errDlt": err_dlt, "nextCode": next_code}


def answer(body):
    return web.Response(body=json.dumps(body, separators=(",", ":")), content_type="application/json")


def overrides(reply):
    """The reply's set fields under OpenIM's keys, int64 as JSON numbers (protojson writes strings)."""
    out = json_format.MessageToDict(reply)
    out.pop("rejection", None)
    for field in reply.DESCRIPTOR.fields:
        if field.type in INT64 and field.json_name in out:
            value = out[field.json_name]
            out[field.json_name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return out


class Gateway:
    def __init__(self, upstream):
        self.channel = grpc.aio.insecure_channel(upstream)
        stub = group_pb2_grpc.GroupCallbackServiceStub(self.channel)
        # command -> (before?, request class, stub method)
        self.commands = {
            "callbackBeforeCreateGroupCommand": (True, group_pb2.BeforeCreateGroupRequest, stub.BeforeCreateGroup),
            "callbackAfterQuitGroupCommand": (False, group_pb2.AfterQuitGroupRequest, stub.AfterQuitGroup),
        }

    async def handle(self, request):
        command = request.path.rstrip("/").rsplit("/", 1)[-1]
        route = self.commands.get(command)
        if route is None:
            return answer(envelope())
        before, cls, call = route
        raw = await request.read()
        try:
            msg = json_format.Parse(raw, cls(), ignore_unknown_fields=True)
        except json_format.ParseError as e:
            return answer(envelope(REJECT_CODE, "invalid callback body", str(e), 1))
        operation_id = request.headers.get("operationID") or getattr(msg, "operation_id", "")
        metadata = (("openim-operation-id", operation_id), ("openim-callback-command", command))
        try:
            reply = await call(msg, timeout=TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            if before and e.code() in REJECTING:
                return answer(envelope(REJECT_CODE, e.details() or "", "", 1))
            # UNIMPLEMENTED and every failure: continue (the gateway's default failure policy).
            return answer(envelope())
        if not before:
            return answer(envelope())
        if reply.HasField("rejection"):
            r = reply.rejection
            code = r.code if r.code > 0 else REJECT_CODE
            return answer(envelope(code, r.message, r.detail, 1))
        body = envelope()
        body.update(overrides(reply))
        return answer(body)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:10006")
    p.add_argument("--upstream", default="127.0.0.1:50051")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)

    async def make_app():
        gw = Gateway(a.upstream)
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/{tail:.*}", gw.handle)
        return app

    web.run_app(make_app(), host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
