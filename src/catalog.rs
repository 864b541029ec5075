//! The command table: one row per OpenIM callback command, resolved against the compiled contract.
//!
//! A row says which service and RPC own a command, how after-events are ordered, and which reply
//! safety rules (docs/commands.md, "OpenIM traps") apply. Everything else — the request and reply shapes, before or
//! after — comes from the proto descriptors. Adding a callback is: proto messages + one row.

use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor, MethodDescriptor};
use std::collections::HashMap;

/// The proto field of every before-response that carries a rejection.
pub const REJECTION_FIELD: &str = "rejection";

/// A reply safety rule (docs/commands.md, "OpenIM traps"). Field names are OpenIM JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// OpenIM copies these reply fields unconditionally: when the service left one unset, fill it
    /// from the request field with the same key, on every continue answer.
    EchoFromRequest(&'static [&'static str]),
    /// OpenIM copies these reply fields into the request's own value and crashes when the request
    /// had none: drop a reply field whose request field was `null`.
    OnlyIfInRequest(&'static [&'static str]),
    /// Overriding this field crashes OpenIM when the original had none, and the request does not
    /// say whether it had: drop it unless the command's `allow_offline_push_info` switch is on.
    DropUnlessAllowed(&'static str),
    /// Entries of this list without this key crash OpenIM: drop them.
    EntriesRequire {
        /// The list field.
        list: &'static str,
        /// The key every entry must carry.
        key: &'static str,
    },
    /// OpenIM fails the operation unless this field holds a JSON object as a string: drop it
    /// when it does not.
    JsonObjectString(&'static str),
}

/// How the delivery of an after-event is ordered when the command asks for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderBy {
    /// By the value of one request key (`groupID`, `conversationID`, `userID`, …).
    Key(&'static str),
    /// By conversation: `groupID` when set, else the sorted pair of `sendID` and `recvID`.
    Conversation,
}

/// One command of the catalogue.
#[derive(Debug)]
pub struct Row {
    /// The key of this command in OpenIM's `config/webhooks.yml` (and, upper-cased, in its
    /// `IMENV_WEBHOOKS_<KEY>_ENABLE` variables). Six keys are not the command's name:
    /// `afterRevokeMsg` is `callbackBeforeAfterMsgCommand`, for one.
    pub key: &'static str,
    /// The OpenIM command: the last path segment and the body's `callbackCommand`.
    pub command: &'static str,
    /// The service name inside the package, e.g. `GroupCallbackService`.
    pub service: &'static str,
    /// The RPC name.
    pub rpc: &'static str,
    /// The ordering key of after-events.
    pub order_by: OrderBy,
    /// Reply safety rules of before-commands.
    pub rules: &'static [Rule],
}

impl Row {
    /// Before or after, by the RPC's name; [`Catalog::load`] checks it against the descriptors
    /// (a before reply has `rejection`, an after reply is empty).
    pub fn phase(&self) -> Phase {
        if self.rpc.starts_with("Before") {
            Phase::Before
        } else {
            Phase::After
        }
    }
}

const fn row(
    key: &'static str,
    command: &'static str,
    service: &'static str,
    rpc: &'static str,
    order_by: OrderBy,
) -> Row {
    ruled(key, command, service, rpc, order_by, &[])
}

const fn ruled(
    key: &'static str,
    command: &'static str,
    service: &'static str,
    rpc: &'static str,
    order_by: OrderBy,
    rules: &'static [Rule],
) -> Row {
    Row {
        key,
        command,
        service,
        rpc,
        order_by,
        rules,
    }
}

const MSG: &str = "MessageCallbackService";
const PUSH: &str = "PushCallbackService";
const USER: &str = "UserCallbackService";
const FRIEND: &str = "FriendCallbackService";
const GROUP: &str = "GroupCallbackService";
const CONV: &str = "ConversationCallbackService";

use OrderBy::{Conversation, Key};

/// The 52 commands of OpenIM (its `pkg/callbackstruct/constant.go`), in its order; docs/commands.md is generated from them.
pub static ROWS: &[Row] = &[
    row(
        "beforeSendSingleMsg",
        "callbackBeforeSendSingleMsgCommand",
        MSG,
        "BeforeSendSingleMsg",
        Conversation,
    ),
    row(
        "afterSendSingleMsg",
        "callbackAfterSendSingleMsgCommand",
        MSG,
        "AfterSendSingleMsg",
        Conversation,
    ),
    row(
        "beforeSendGroupMsg",
        "callbackBeforeSendGroupMsgCommand",
        MSG,
        "BeforeSendGroupMsg",
        Conversation,
    ),
    row(
        "afterSendGroupMsg",
        "callbackAfterSendGroupMsgCommand",
        MSG,
        "AfterSendGroupMsg",
        Conversation,
    ),
    ruled(
        "beforeMsgModify",
        "callbackBeforeMsgModifyCommand",
        MSG,
        "BeforeMsgModify",
        Conversation,
        &[
            Rule::DropUnlessAllowed("offlinePushInfo"),
            Rule::JsonObjectString("content"),
        ],
    ),
    row(
        "afterMsgSaveDB",
        "callbackAfterMsgSaveDBCommand",
        MSG,
        "AfterMsgSaveDB",
        Conversation,
    ),
    row(
        "afterGroupMsgRead",
        "callbackAfterGroupMsgReadCommand",
        MSG,
        "AfterGroupMsgRead",
        Key("sendID"),
    ),
    row(
        "afterSingleMsgRead",
        "callbackAfterSingleMsgReadCommand",
        MSG,
        "AfterSingleMsgRead",
        Key("conversationID"),
    ),
    row(
        "afterRevokeMsg",
        "callbackBeforeAfterMsgCommand",
        MSG,
        "AfterRevokeMsg",
        Key("conversationID"),
    ),
    row(
        "afterUserOnline",
        "callbackAfterUserOnlineCommand",
        USER,
        "AfterUserOnline",
        Key("userID"),
    ),
    row(
        "afterUserOffline",
        "callbackAfterUserOfflineCommand",
        USER,
        "AfterUserOffline",
        Key("userID"),
    ),
    row(
        "afterUserKickOff",
        "callbackAfterUserKickOffCommand",
        USER,
        "AfterUserKickOff",
        Key("userID"),
    ),
    row(
        "beforeOfflinePush",
        "callbackBeforeOfflinePushCommand",
        PUSH,
        "BeforeOfflinePush",
        Key("sendID"),
    ),
    row(
        "beforeOnlinePush",
        "callbackBeforeOnlinePushCommand",
        PUSH,
        "BeforeOnlinePush",
        Key("sendID"),
    ),
    row(
        "beforeGroupOnlinePush",
        "callbackBeforeGroupOnlinePushCommand",
        PUSH,
        "BeforeGroupOnlinePush",
        Key("groupID"),
    ),
    row(
        "beforeAddFriend",
        "callbackBeforeAddFriendCommand",
        FRIEND,
        "BeforeAddFriend",
        Key("fromUserID"),
    ),
    row(
        "afterAddFriend",
        "callbackAfterAddFriendCommand",
        FRIEND,
        "AfterAddFriend",
        Key("fromUserID"),
    ),
    row(
        "beforeAddFriendAgree",
        "callbackBeforeAddFriendAgreeCommand",
        FRIEND,
        "BeforeAddFriendAgree",
        Key("fromUserID"),
    ),
    row(
        "afterAddFriendAgree",
        "callbackAfterAddFriendAgreeCommand",
        FRIEND,
        "AfterAddFriendAgree",
        Key("fromUserID"),
    ),
    row(
        "afterDeleteFriend",
        "callbackAfterDeleteFriendCommand",
        FRIEND,
        "AfterDeleteFriend",
        Key("ownerUserID"),
    ),
    row(
        "beforeImportFriends",
        "callbackBeforeImportFriendsCommand",
        FRIEND,
        "BeforeImportFriends",
        Key("ownerUserID"),
    ),
    row(
        "afterImportFriends",
        "callbackAfterImportFriendsCommand",
        FRIEND,
        "AfterImportFriends",
        Key("ownerUserID"),
    ),
    row(
        "beforeAddBlack",
        "callbackBeforeAddBlackCommand",
        FRIEND,
        "BeforeAddBlack",
        Key("ownerUserID"),
    ),
    row(
        "afterRemoveBlack",
        "callbackAfterRemoveBlackCommand",
        FRIEND,
        "AfterRemoveBlack",
        Key("ownerUserID"),
    ),
    row(
        "beforeSetFriendRemark",
        "callbackBeforeSetFriendRemarkCommand",
        FRIEND,
        "BeforeSetFriendRemark",
        Key("ownerUserID"),
    ),
    row(
        "afterSetFriendRemark",
        "callbackAfterSetFriendRemarkCommand",
        FRIEND,
        "AfterSetFriendRemark",
        Key("ownerUserID"),
    ),
    row(
        "beforeUpdateUserInfo",
        "callbackBeforeUpdateUserInfoCommand",
        USER,
        "BeforeUpdateUserInfo",
        Key("userID"),
    ),
    row(
        "afterUpdateUserInfo",
        "callbackAfterUpdateUserInfoCommand",
        USER,
        "AfterUpdateUserInfo",
        Key("userID"),
    ),
    ruled(
        "beforeUpdateUserInfoEx",
        "callbackBeforeUpdateUserInfoExCommand",
        USER,
        "BeforeUpdateUserInfoEx",
        Key("userID"),
        &[Rule::OnlyIfInRequest(&["nickName", "faceURL", "ex"])],
    ),
    row(
        "afterUpdateUserInfoEx",
        "callbackAfterUpdateUserInfoExCommand",
        USER,
        "AfterUpdateUserInfoEx",
        Key("userID"),
    ),
    row(
        "beforeUserRegister",
        "callbackBeforeUserRegisterCommand",
        USER,
        "BeforeUserRegister",
        Key("callbackCommand"),
    ),
    row(
        "afterUserRegister",
        "callbackAfterUserRegisterCommand",
        USER,
        "AfterUserRegister",
        Key("callbackCommand"),
    ),
    row(
        "beforeCreateGroup",
        "callbackBeforeCreateGroupCommand",
        GROUP,
        "BeforeCreateGroup",
        Key("groupID"),
    ),
    row(
        "afterCreateGroup",
        "callbackAfterCreateGroupCommand",
        GROUP,
        "AfterCreateGroup",
        Key("groupID"),
    ),
    ruled(
        "beforeMemberJoinGroup",
        "callbackBeforeMembersJoinGroupCommand",
        GROUP,
        "BeforeMembersJoinGroup",
        Key("groupID"),
        &[Rule::EntriesRequire {
            list: "memberCallbackList",
            key: "userID",
        }],
    ),
    row(
        "beforeSetGroupMemberInfo",
        "callbackBeforeSetGroupMemberInfoCommand",
        GROUP,
        "BeforeSetGroupMemberInfo",
        Key("groupID"),
    ),
    row(
        "afterSetGroupMemberInfo",
        "callbackAfterSetGroupMemberInfoCommand",
        GROUP,
        "AfterSetGroupMemberInfo",
        Key("groupID"),
    ),
    row(
        "afterQuitGroup",
        "callbackAfterQuitGroupCommand",
        GROUP,
        "AfterQuitGroup",
        Key("groupID"),
    ),
    row(
        "afterKickGroupMember",
        "callbackAfterKickGroupCommand",
        GROUP,
        "AfterKickGroup",
        Key("groupID"),
    ),
    row(
        "afterDismissGroup",
        "callbackAfterDisMissGroupCommand",
        GROUP,
        "AfterDismissGroup",
        Key("groupID"),
    ),
    row(
        "beforeApplyJoinGroup",
        "callbackBeforeJoinGroupCommand",
        GROUP,
        "BeforeJoinGroup",
        Key("groupID"),
    ),
    row(
        "afterTransferGroupOwner",
        "callbackAfterTransferGroupOwnerCommand",
        GROUP,
        "AfterTransferGroupOwner",
        Key("groupID"),
    ),
    row(
        "beforeInviteUserToGroup",
        "callbackBeforeInviteJoinGroupCommand",
        GROUP,
        "BeforeInviteJoinGroup",
        Key("groupID"),
    ),
    row(
        "afterJoinGroup",
        "callbackAfterJoinGroupCommand",
        GROUP,
        "AfterJoinGroup",
        Key("groupID"),
    ),
    ruled(
        "beforeSetGroupInfo",
        "callbackBeforeSetGroupInfoCommand",
        GROUP,
        "BeforeSetGroupInfo",
        Key("groupID"),
        &[Rule::EchoFromRequest(&[
            "groupID",
            "groupName",
            "faceURL",
            "introduction",
        ])],
    ),
    row(
        "afterSetGroupInfo",
        "callbackAfterSetGroupInfoCommand",
        GROUP,
        "AfterSetGroupInfo",
        Key("groupID"),
    ),
    ruled(
        "beforeSetGroupInfoEx",
        "callbackBeforeSetGroupInfoExCommand",
        GROUP,
        "BeforeSetGroupInfoEx",
        Key("groupID"),
        &[Rule::EchoFromRequest(&[
            "groupID",
            "groupName",
            "faceURL",
            "introduction",
            "ex",
            "needVerification",
            "lookMemberInfo",
            "applyMemberFriend",
        ])],
    ),
    row(
        "afterSetGroupInfoEx",
        "callbackAfterSetGroupInfoExCommand",
        GROUP,
        "AfterSetGroupInfoEx",
        Key("groupID"),
    ),
    row(
        "beforeCreateSingleChatConversations",
        "callbackBeforeCreateSingleChatConversationsCommand",
        CONV,
        "BeforeCreateSingleChatConversations",
        Key("conversationId"),
    ),
    row(
        "afterCreateSingleChatConversations",
        "callbackAfterCreateSingleChatConversationsCommand",
        CONV,
        "AfterCreateSingleChatConversations",
        Key("conversationId"),
    ),
    row(
        "beforeCreateGroupChatConversations",
        "callbackBeforeCreateGroupChatConversationsCommand",
        CONV,
        "BeforeCreateGroupChatConversations",
        Key("conversationId"),
    ),
    row(
        "afterCreateGroupChatConversations",
        "callbackAfterCreateGroupChatConversationsCommand",
        CONV,
        "AfterCreateGroupChatConversations",
        Key("conversationId"),
    ),
];

/// Before callbacks may reject or modify; after callbacks are notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Synchronous: the reply can reject or modify the operation.
    Before,
    /// Asynchronous notification: the reply is ignored.
    After,
}

/// A row resolved against the descriptors: everything the generic path needs for one command.
#[derive(Debug)]
pub struct CommandEntry {
    /// The catalogue row.
    pub row: &'static Row,
    /// The RPC.
    pub method: MethodDescriptor,
    /// The gRPC path, `/openim.callback.v1.GroupCallbackService/AfterQuitGroup`.
    pub path: http::uri::PathAndQuery,
    /// Before or after, from the RPC's name and the reply's `rejection` field.
    pub phase: Phase,
    /// The reply's `rejection` field (before callbacks only).
    pub rejection: Option<FieldDescriptor>,
    /// The request type compiled for the one-pass JSON → protobuf path.
    pub transcoder: crate::json::Transcoder,
    /// The reply type compiled for the one-pass protobuf → envelope path.
    pub reply: crate::json::ReplyWriter,
}

impl CommandEntry {
    /// The request message type.
    pub fn request(&self) -> MessageDescriptor {
        self.method.input()
    }

    /// The response message type.
    pub fn response(&self) -> MessageDescriptor {
        self.method.output()
    }
}

/// A catalogue row that does not match the contract.
#[derive(Debug, thiserror::Error)]
#[error("catalogue row {command}: {problem}")]
pub struct CatalogError {
    /// The row's command.
    pub command: &'static str,
    /// What does not match.
    pub problem: String,
}

/// All commands, by command string.
#[derive(Debug)]
pub struct Catalog {
    entries: HashMap<&'static str, CommandEntry>,
}

static CONTRACT: std::sync::LazyLock<Result<Catalog, String>> = std::sync::LazyLock::new(|| {
    let pool = crate::proto::pool().map_err(|e| format!("compiled descriptors: {e}"))?;
    Catalog::load(pool, crate::proto::PACKAGE).map_err(|e| e.to_string())
});

impl Catalog {
    /// The catalogue of the compiled contract, resolved once for the life of the process.
    pub fn contract() -> Result<&'static Catalog, &'static str> {
        CONTRACT.as_ref().map_err(String::as_str)
    }

    /// Resolves every row against the pool and checks its rules; any mismatch is an error.
    pub fn load(pool: &DescriptorPool, package: &str) -> Result<Self, CatalogError> {
        let mut entries = HashMap::with_capacity(ROWS.len());
        for row in ROWS {
            let entry = resolve(pool, package, row)?;
            if entries.insert(row.command, entry).is_some() {
                return Err(CatalogError {
                    command: row.command,
                    problem: "listed twice".into(),
                });
            }
        }
        Ok(Self { entries })
    }

    /// The entry of a command.
    pub fn get(&self, command: &str) -> Option<&CommandEntry> {
        self.entries.get(command)
    }

    /// Every entry, in catalogue order.
    pub fn entries(&self) -> impl Iterator<Item = &CommandEntry> {
        ROWS.iter().filter_map(|r| self.entries.get(r.command))
    }
}

fn resolve(
    pool: &DescriptorPool,
    package: &str,
    row: &'static Row,
) -> Result<CommandEntry, CatalogError> {
    let fail = |problem: String| CatalogError {
        command: row.command,
        problem,
    };
    let service_name = format!("{package}.{}", row.service);
    let service = pool
        .get_service_by_name(&service_name)
        .ok_or_else(|| fail(format!("service {service_name} is not in the contract")))?;
    let method = service
        .methods()
        .find(|m| m.name() == row.rpc)
        .ok_or_else(|| fail(format!("{service_name} has no RPC {}", row.rpc)))?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(fail(format!("{} must be unary", row.rpc)));
    }
    let rejection = method.output().get_field_by_name(REJECTION_FIELD);
    let phase = match (row.phase() == Phase::Before, &rejection) {
        (true, Some(_)) => Phase::Before,
        (false, None) => Phase::After,
        (true, None) => {
            return Err(fail(format!(
                "{} has no `rejection` field",
                method.output().name()
            )));
        }
        (false, Some(_)) => {
            return Err(fail(format!(
                "after reply {} must be empty",
                method.output().name()
            )));
        }
    };
    if phase == Phase::After && method.output().fields().len() != 0 {
        return Err(fail(format!(
            "after reply {} must be empty",
            method.output().name()
        )));
    }
    let path = format!("/{service_name}/{}", row.rpc)
        .parse()
        .map_err(|e| fail(format!("bad path: {e}")))?;
    let input = method.input();
    let output = method.output();
    let need = |desc: &MessageDescriptor, key: &str, side: &str| {
        desc.get_field_by_json_name(key)
            .map(|_| ())
            .ok_or_else(|| fail(format!("{side} {} has no key `{key}`", desc.name())))
    };
    match row.order_by {
        OrderBy::Key(k) => need(&input, k, "request")?,
        OrderBy::Conversation => need(&input, "sendID", "request")?,
    }
    for rule in row.rules {
        match *rule {
            Rule::EchoFromRequest(keys) | Rule::OnlyIfInRequest(keys) => {
                for k in keys {
                    need(&input, k, "request")?;
                    need(&output, k, "reply")?;
                }
            }
            Rule::DropUnlessAllowed(k) | Rule::JsonObjectString(k) => need(&output, k, "reply")?,
            Rule::EntriesRequire { list, key } => {
                need(&output, list, "reply")?;
                let entry = output
                    .get_field_by_json_name(list)
                    .and_then(|f| f.kind().as_message().cloned())
                    .ok_or_else(|| fail(format!("reply key `{list}` is not a list of messages")))?;
                need(&entry, key, "list entry")?;
            }
        }
    }
    Ok(CommandEntry {
        row,
        transcoder: crate::json::Transcoder::new(&method.input()),
        reply: crate::json::ReplyWriter::new(&method.output()),
        method,
        path,
        phase,
        rejection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_52_commands_23_before_and_29_after() {
        let catalog = Catalog::load(crate::proto::pool().expect("pool"), crate::proto::PACKAGE)
            .expect("catalogue resolves");
        assert_eq!(catalog.entries().count(), 52);
        let before = catalog
            .entries()
            .filter(|e| e.phase == Phase::Before)
            .count();
        assert_eq!((before, 52 - before), (23, 29));
    }

    #[test]
    fn command_is_derived_from_the_rpc_except_the_two_renamed() {
        for row in ROWS {
            let derived = format!("callback{}Command", row.rpc);
            match row.rpc {
                "AfterRevokeMsg" => assert_eq!(row.command, "callbackBeforeAfterMsgCommand"),
                "AfterDismissGroup" => assert_eq!(row.command, "callbackAfterDisMissGroupCommand"),
                _ => assert_eq!(row.command, derived),
            }
        }
    }
}
