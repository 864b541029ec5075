"""The six callback services of openim.callback.v1, implementing the example policy.

Each class subclasses a generated *Servicer. An RPC that is not overridden keeps the generated
base method, which answers UNIMPLEMENTED: the gateway then lets OpenIM continue unchanged. So a
hook only writes the RPCs it cares about.

Before RPCs decide: an empty response allows, a response with `rejection` set rejects, and a
response with some `optional` fields set modifies exactly those fields (unset means "keep OpenIM's
value"). After RPCs are notifications: they print one line and answer the empty response; an error
status instead would make the gateway retry the delivery.
"""

import logging

import grpc

from openim.callback.v1 import (
    common_pb2,
    conversation_pb2,
    conversation_pb2_grpc,
    friend_pb2,
    friend_pb2_grpc,
    group_pb2,
    group_pb2_grpc,
    message_pb2,
    message_pb2_grpc,
    push_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

from . import policy

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext

# gRPC metadata keys the gateway sends with every call (delivery ones only on spooled events).
OPERATION_ID = "openim-operation-id"
CALLBACK_COMMAND = "openim-callback-command"
DELIVERY_ID = "openim-delivery-id"


def _metadata(context: Context, key: str) -> str:
    """A metadata value the gateway sent, or "-" when it is absent."""
    for name, value in context.invocation_metadata() or ():
        if name == key and value:
            return value
    return "-"


def _decided(context: Context, decision: str, response):
    """Logs a before-callback decision (to stderr, with OpenIM's operation id); returns response."""
    log.info(
        "%s operation_id=%s decision=%s",
        _metadata(context, CALLBACK_COMMAND),
        _metadata(context, OPERATION_ID),
        decision,
    )
    return response


def _rejection(message: str, word: str) -> common_pb2.Rejection:
    """What the client sees as the error: errCode, errMsg and errDlt (the word found)."""
    return common_pb2.Rejection(code=policy.REJECT_CODE, message=message, detail=word)


def _after(context: Context, response):
    """Prints `after <command> <delivery-id>` and acknowledges the event.

    The delivery id stays the same across the gateway's retries of one spooled event: a real hook
    uses it to process each event once.
    """
    command = _metadata(context, CALLBACK_COMMAND)
    print(f"after {command} {_metadata(context, DELIVERY_ID)}", flush=True)
    return response


class MessageHooks(message_pb2_grpc.MessageCallbackServiceServicer):
    async def BeforeSendSingleMsg(
        self, request: message_pb2.BeforeSendSingleMsgRequest, context: Context
    ) -> message_pb2.BeforeSendSingleMsgResponse:
        if word := policy.blocked_word(request.content):
            rejection = _rejection("message contains a blocked word", word)
            return _decided(
                context, "reject", message_pb2.BeforeSendSingleMsgResponse(rejection=rejection)
            )
        return _decided(context, "allow", message_pb2.BeforeSendSingleMsgResponse())

    async def BeforeSendGroupMsg(
        self, request: message_pb2.BeforeSendGroupMsgRequest, context: Context
    ) -> message_pb2.BeforeSendGroupMsgResponse:
        if word := policy.blocked_word(request.content):
            rejection = _rejection("message contains a blocked word", word)
            return _decided(
                context, "reject", message_pb2.BeforeSendGroupMsgResponse(rejection=rejection)
            )
        return _decided(context, "allow", message_pb2.BeforeSendGroupMsgResponse())

    async def BeforeMsgModify(
        self, request: message_pb2.BeforeMsgModifyRequest, context: Context
    ) -> message_pb2.BeforeMsgModifyResponse:
        # Setting the optional `content` replaces the message content; the other fields stay unset
        # and so keep OpenIM's values.
        if (content := policy.mask_content_json(request.content)) is not None:
            return _decided(context, "modify", message_pb2.BeforeMsgModifyResponse(content=content))
        return _decided(context, "allow", message_pb2.BeforeMsgModifyResponse())

    async def AfterSendSingleMsg(self, request, context):
        return _after(context, message_pb2.AfterSendSingleMsgResponse())

    async def AfterSendGroupMsg(self, request, context):
        return _after(context, message_pb2.AfterSendGroupMsgResponse())

    async def AfterMsgSaveDB(self, request, context):
        return _after(context, message_pb2.AfterMsgSaveDBResponse())

    async def AfterGroupMsgRead(self, request, context):
        return _after(context, message_pb2.AfterGroupMsgReadResponse())

    async def AfterSingleMsgRead(self, request, context):
        return _after(context, message_pb2.AfterSingleMsgReadResponse())

    async def AfterRevokeMsg(self, request, context):
        return _after(context, message_pb2.AfterRevokeMsgResponse())


class PushHooks(push_pb2_grpc.PushCallbackServiceServicer):
    """No push policy: every push RPC is the generated UNIMPLEMENTED, so pushes go on unchanged."""


class UserHooks(user_pb2_grpc.UserCallbackServiceServicer):
    async def BeforeUserRegister(
        self, request: user_pb2.BeforeUserRegisterRequest, context: Context
    ) -> user_pb2.BeforeUserRegisterResponse:
        if all(user.face_url for user in request.users):
            return _decided(context, "allow", user_pb2.BeforeUserRegisterResponse())
        # A non-empty reply list replaces OpenIM's whole list, so reply with every user.
        response = user_pb2.BeforeUserRegisterResponse(users=request.users)
        for user in response.users:
            if not user.face_url:
                user.face_url = policy.DEFAULT_AVATAR
        return _decided(context, "modify", response)

    async def AfterUpdateUserInfo(self, request, context):
        return _after(context, user_pb2.AfterUpdateUserInfoResponse())

    async def AfterUpdateUserInfoEx(self, request, context):
        return _after(context, user_pb2.AfterUpdateUserInfoExResponse())

    async def AfterUserRegister(self, request, context):
        return _after(context, user_pb2.AfterUserRegisterResponse())

    async def AfterUserOnline(self, request, context):
        return _after(context, user_pb2.AfterUserOnlineResponse())

    async def AfterUserOffline(self, request, context):
        return _after(context, user_pb2.AfterUserOfflineResponse())

    async def AfterUserKickOff(self, request, context):
        return _after(context, user_pb2.AfterUserKickOffResponse())


class FriendHooks(friend_pb2_grpc.FriendCallbackServiceServicer):
    async def BeforeSetFriendRemark(
        self, request: friend_pb2.BeforeSetFriendRemarkRequest, context: Context
    ) -> friend_pb2.BeforeSetFriendRemarkResponse:
        if (remark := policy.mask(request.remark)) is not None:
            return _decided(
                context, "modify", friend_pb2.BeforeSetFriendRemarkResponse(remark=remark)
            )
        return _decided(context, "allow", friend_pb2.BeforeSetFriendRemarkResponse())

    async def AfterAddFriend(self, request, context):
        return _after(context, friend_pb2.AfterAddFriendResponse())

    async def AfterAddFriendAgree(self, request, context):
        return _after(context, friend_pb2.AfterAddFriendAgreeResponse())

    async def AfterDeleteFriend(self, request, context):
        return _after(context, friend_pb2.AfterDeleteFriendResponse())

    async def AfterImportFriends(self, request, context):
        return _after(context, friend_pb2.AfterImportFriendsResponse())

    async def AfterRemoveBlack(self, request, context):
        return _after(context, friend_pb2.AfterRemoveBlackResponse())

    async def AfterSetFriendRemark(self, request, context):
        return _after(context, friend_pb2.AfterSetFriendRemarkResponse())


class GroupHooks(group_pb2_grpc.GroupCallbackServiceServicer):
    async def BeforeCreateGroup(
        self, request: group_pb2.BeforeCreateGroupRequest, context: Context
    ) -> group_pb2.BeforeCreateGroupResponse:
        if word := policy.blocked_word(request.group_name):
            rejection = _rejection("group name contains a blocked word", word)
            return _decided(
                context, "reject", group_pb2.BeforeCreateGroupResponse(rejection=rejection)
            )
        if not request.ex:
            return _decided(
                context, "modify", group_pb2.BeforeCreateGroupResponse(ex=policy.GROUP_TAG)
            )
        return _decided(context, "allow", group_pb2.BeforeCreateGroupResponse())

    async def AfterCreateGroup(self, request, context):
        return _after(context, group_pb2.AfterCreateGroupResponse())

    async def AfterSetGroupMemberInfo(self, request, context):
        return _after(context, group_pb2.AfterSetGroupMemberInfoResponse())

    async def AfterQuitGroup(self, request, context):
        return _after(context, group_pb2.AfterQuitGroupResponse())

    async def AfterKickGroup(self, request, context):
        return _after(context, group_pb2.AfterKickGroupResponse())

    async def AfterDismissGroup(self, request, context):
        return _after(context, group_pb2.AfterDismissGroupResponse())

    async def AfterTransferGroupOwner(self, request, context):
        return _after(context, group_pb2.AfterTransferGroupOwnerResponse())

    async def AfterJoinGroup(self, request, context):
        return _after(context, group_pb2.AfterJoinGroupResponse())

    async def AfterSetGroupInfo(self, request, context):
        return _after(context, group_pb2.AfterSetGroupInfoResponse())

    async def AfterSetGroupInfoEx(self, request, context):
        return _after(context, group_pb2.AfterSetGroupInfoExResponse())


class ConversationHooks(conversation_pb2_grpc.ConversationCallbackServiceServicer):
    async def AfterCreateSingleChatConversations(self, request, context):
        return _after(context, conversation_pb2.AfterCreateSingleChatConversationsResponse())

    async def AfterCreateGroupChatConversations(self, request, context):
        return _after(context, conversation_pb2.AfterCreateGroupChatConversationsResponse())
