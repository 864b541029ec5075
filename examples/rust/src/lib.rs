//! The Rust example hook service: a plain tonic server implementing all six callback services on
//! the contract crate (`openim-callback-contract`) alone, with no access to gateway internals.
//!
//! With no upstream configured, the gateway starts it in-process on a loopback port (the embedded
//! default of `cargo run --release`), so it shows allow / reject / modify out of the box; the
//! `openim-callback-example` binary serves it on its own (`examples/rust/serve PORT`). It is the
//! Rust example to copy from: every RPC is ordinary tonic service code on the generated types.
//!
//! The policy is `examples/POLICY.md`, the same in all five languages (a harness checks them all
//! through the gateway), driven by [`ExampleConfig`]:
//!
//! - **Reject** messages and group names that contain a blocked word (case-insensitive) with the
//!   configured code. A rejection is a normal response with `rejection` set; the gateway turns it
//!   into OpenIM's `nextCode 1` envelope.
//! - **Modify**: mask blocked words in edited messages and friend remarks with `***`, give new
//!   users without an avatar the default one, tag new groups that have no `ex`. Only the fields
//!   set in a response change anything.
//! - **After** callbacks: one line `after <command> <delivery-id>` on stdout (standalone binary) or
//!   one log line (in-process), then the empty response.
//! - Every other RPC is left to the generated default stub, which answers UNIMPLEMENTED: the
//!   gateway continues the operation unchanged.

use openim_callback_contract::metadata as meta;
use openim_callback_contract::v1 as pb;
use pb::conversation_callback_service_server::{
    ConversationCallbackService, ConversationCallbackServiceServer,
};
use pb::friend_callback_service_server::{FriendCallbackService, FriendCallbackServiceServer};
use pb::group_callback_service_server::{GroupCallbackService, GroupCallbackServiceServer};
use pb::message_callback_service_server::{MessageCallbackService, MessageCallbackServiceServer};
use pb::push_callback_service_server::{PushCallbackService, PushCallbackServiceServer};
use pb::user_callback_service_server::{UserCallbackService, UserCallbackServiceServer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// The example's settings (the gateway's `example:` config section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleConfig {
    /// Words that make the example reject group names, messages, remarks and nicknames.
    pub blocked_words: Vec<String>,
    /// The code the example rejects with (OpenIM's business range is 20001–29999).
    pub reject_code: i32,
    /// The avatar the example gives users who register without one.
    pub default_face_url: String,
}

impl Default for ExampleConfig {
    fn default() -> Self {
        Self {
            blocked_words: vec!["forbidden".into(), "spam".into()],
            reject_code: 20001,
            default_face_url: "https://example.com/avatar/default.png".into(),
        }
    }
}

/// What every RPC returns.
type Reply<T> = Result<Response<T>, Status>;

/// What a blocked word is replaced with.
const MASK: &str = "***";
/// The `ex` a new group gets when it has none.
const CREATED_VIA: &str = r#"{"createdVia":"openim-callback-gateway"}"#;

/// Starts the example upstream on a loopback port and returns its address and serving task.
///
/// Serving errors are logged; aborting the task stops the server.
pub async fn spawn(cfg: ExampleConfig) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let routes = routes(cfg);
    let task = tokio::spawn(async move {
        let served = Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "built-in example upstream stopped");
        }
    });
    Ok((addr, task))
}

/// The six callback services of the example (after-events logged), ready to mount on any tonic
/// server.
pub fn routes(cfg: ExampleConfig) -> Routes {
    ExampleUpstream::new(cfg).into_routes()
}

/// The example policy, on all six callback services.
#[derive(Debug, Clone)]
pub struct ExampleUpstream {
    cfg: ExampleConfig,
    after_lines: bool,
}

impl ExampleUpstream {
    /// An example upstream with this configuration; after-events are logged.
    pub fn new(cfg: ExampleConfig) -> Self {
        Self {
            cfg,
            after_lines: false,
        }
    }

    /// The same, printing `after <command> <delivery-id>` on stdout for each after-event instead
    /// of logging it (what the standalone service does, see `examples/POLICY.md`).
    pub fn with_after_lines(mut self) -> Self {
        self.after_lines = true;
        self
    }

    /// The six callback services, ready to mount on any tonic server.
    pub fn into_routes(self) -> Routes {
        Routes::new(MessageCallbackServiceServer::new(self.clone()))
            .add_service(PushCallbackServiceServer::new(self.clone()))
            .add_service(UserCallbackServiceServer::new(self.clone()))
            .add_service(FriendCallbackServiceServer::new(self.clone()))
            .add_service(GroupCallbackServiceServer::new(self.clone()))
            .add_service(ConversationCallbackServiceServer::new(self))
    }

    /// The configured blocked words, empty entries skipped.
    fn words(&self) -> impl Iterator<Item = &str> {
        self.cfg
            .blocked_words
            .iter()
            .map(String::as_str)
            .filter(|word| !word.is_empty())
    }

    /// The first blocked word `text` contains, ignoring case.
    fn blocked_word<'a>(&'a self, text: &str) -> Option<&'a str> {
        let text = text.to_lowercase();
        self.words()
            .find(|word| text.contains(&word.to_lowercase()))
    }

    /// `text` with every blocked word replaced by `***`, or `None` when it contains none.
    fn mask(&self, text: &str) -> Option<String> {
        let mut masked = String::with_capacity(text.len());
        let mut rest = text;
        let mut changed = false;
        while let Some(c) = rest.chars().next() {
            let blocked = self
                .words()
                .filter_map(|word| prefix_len_ignore_case(rest, word))
                .max();
            if let Some(len) = blocked {
                masked.push_str(MASK);
                rest = &rest[len..];
                changed = true;
            } else {
                masked.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        changed.then_some(masked)
    }

    /// Masks the string values of a message element such as `{"content":"hello"}` and returns
    /// it as a JSON object string again (OpenIM requires one), or `None` when nothing changed or
    /// the content is not a JSON object.
    fn mask_content_json(&self, content: &str) -> Option<String> {
        let mut element: Value = serde_json::from_str(content).ok()?;
        if !element.is_object() || !self.mask_strings(&mut element) {
            return None;
        }
        serde_json::to_string(&element).ok()
    }

    /// Masks every string inside `value` in place; whether anything changed.
    fn mask_strings(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => match self.mask(text) {
                Some(masked) => {
                    *text = masked;
                    true
                }
                None => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.mask_strings(item) | changed),
            Value::Object(fields) => fields
                .values_mut()
                .fold(false, |changed, field| self.mask_strings(field) | changed),
            _ => false,
        }
    }

    /// `users` with the default avatar given to everyone who has none, or `None` when nobody
    /// lacks one (or no default is configured).
    fn with_default_faces(&self, mut users: Vec<pb::UserInfo>) -> Option<Vec<pb::UserInfo>> {
        let default = &self.cfg.default_face_url;
        if default.is_empty() {
            return None;
        }
        let mut changed = false;
        for user in users.iter_mut().filter(|user| user.face_url.is_empty()) {
            user.face_url.clone_from(default);
            changed = true;
        }
        changed.then_some(users)
    }

    /// A response rejecting the operation with `message`; `detail` says what was wrong (the
    /// blocked word). Logged as the decision.
    fn reject<T: Rejectable>(&self, command: &str, message: &str, detail: &str) -> Reply<T> {
        tracing::info!(
            command,
            decision = "reject",
            reason = message,
            detail,
            "before-callback decision"
        );
        Ok(Response::new(T::rejected(pb::Rejection {
            code: self.cfg.reject_code,
            message: message.to_owned(),
            detail: detail.to_owned(),
        })))
    }
}

/// The byte length of the prefix of `text` that equals `word` ignoring case, if there is one.
fn prefix_len_ignore_case(text: &str, word: &str) -> Option<usize> {
    let mut chars = text.chars();
    for expected in word.chars() {
        let actual = chars.next()?;
        if !actual.to_lowercase().eq(expected.to_lowercase()) {
            return None;
        }
    }
    Some(text.len() - chars.as_str().len())
}

/// Lets the operation go on unchanged (an empty response: every field unset), and logs why.
fn allow<T: Default>(command: &str, reason: &str) -> Reply<T> {
    tracing::info!(
        command,
        decision = "allow",
        reason,
        "before-callback decision"
    );
    Ok(Response::new(T::default()))
}

/// Lets the operation go on with the fields set in `response`, and logs why.
fn modify<T>(command: &str, reason: &str, response: T) -> Reply<T> {
    tracing::info!(
        command,
        decision = "modify",
        reason,
        "before-callback decision"
    );
    Ok(Response::new(response))
}

/// The delivery id and attempt number the gateway adds to spooled after-events, when present.
fn delivery(metadata: &MetadataMap) -> (Option<&str>, Option<u32>) {
    let get = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok());
    let attempt = get(meta::DELIVERY_ATTEMPT).and_then(|attempt| attempt.parse().ok());
    (get(meta::DELIVERY_ID), attempt)
}

/// Logs an after-event (its command, delivery id and attempt, and the named request fields) and
/// acknowledges it with the empty response. An error status instead would make the gateway retry
/// the delivery.
macro_rules! after_event {
    ($self:ident, $request:ident, $command:literal $(, $field:ident)* $(,)?) => {{
        let (delivery_id, attempt) = delivery($request.metadata());
        let event = $request.get_ref();
        if $self.after_lines {
            let command = $request
                .metadata()
                .get(meta::COMMAND)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            after_line(command, delivery_id.unwrap_or("-"));
            return Ok(Response::new(Default::default()));
        }
        tracing::info!(
            command = $command,
            delivery_id,
            attempt,
            $($field = ?event.$field,)*
            "after-event received"
        );
        Ok(Response::new(Default::default()))
    }};
}

/// Prints one after-event line on stdout and flushes it, so a reader sees it at once.
fn after_line(command: &str, delivery_id: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "after {command} {delivery_id}");
    let _ = out.flush();
}

/// A before-callback response, which can carry a rejection.
trait Rejectable: Default {
    /// The response that rejects the operation.
    fn rejected(rejection: pb::Rejection) -> Self;
}

macro_rules! impl_rejectable {
    ($($response:ident),* $(,)?) => {$(
        impl Rejectable for pb::$response {
            #[allow(clippy::needless_update)] // some responses carry nothing but the rejection
            fn rejected(rejection: pb::Rejection) -> Self {
                Self { rejection: Some(rejection), ..Self::default() }
            }
        }
    )*};
}

impl_rejectable!(
    BeforeSendSingleMsgResponse,
    BeforeSendGroupMsgResponse,
    BeforeMsgModifyResponse,
    BeforeOfflinePushResponse,
    BeforeOnlinePushResponse,
    BeforeGroupOnlinePushResponse,
    BeforeUpdateUserInfoResponse,
    BeforeUpdateUserInfoExResponse,
    BeforeUserRegisterResponse,
    BeforeAddFriendResponse,
    BeforeAddFriendAgreeResponse,
    BeforeImportFriendsResponse,
    BeforeAddBlackResponse,
    BeforeSetFriendRemarkResponse,
    BeforeCreateGroupResponse,
    BeforeMembersJoinGroupResponse,
    BeforeSetGroupMemberInfoResponse,
    BeforeJoinGroupResponse,
    BeforeInviteJoinGroupResponse,
    BeforeSetGroupInfoResponse,
    BeforeSetGroupInfoExResponse,
    BeforeCreateSingleChatConversationsResponse,
    BeforeCreateGroupChatConversationsResponse,
);

#[tonic::async_trait]
impl MessageCallbackService for ExampleUpstream {
    async fn before_send_single_msg(
        &self,
        request: Request<pb::BeforeSendSingleMsgRequest>,
    ) -> Reply<pb::BeforeSendSingleMsgResponse> {
        const COMMAND: &str = "callbackBeforeSendSingleMsgCommand";
        if let Some(word) = self.blocked_word(&request.get_ref().content) {
            return self.reject(COMMAND, "message contains a blocked word", word);
        }
        allow(COMMAND, "no blocked word")
    }

    async fn after_send_single_msg(
        &self,
        request: Request<pb::AfterSendSingleMsgRequest>,
    ) -> Reply<pb::AfterSendSingleMsgResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSendSingleMsgCommand",
            send_id,
            recv_id,
            client_msg_id
        )
    }

    async fn before_send_group_msg(
        &self,
        request: Request<pb::BeforeSendGroupMsgRequest>,
    ) -> Reply<pb::BeforeSendGroupMsgResponse> {
        const COMMAND: &str = "callbackBeforeSendGroupMsgCommand";
        if let Some(word) = self.blocked_word(&request.get_ref().content) {
            return self.reject(COMMAND, "message contains a blocked word", word);
        }
        allow(COMMAND, "no blocked word")
    }

    async fn after_send_group_msg(
        &self,
        request: Request<pb::AfterSendGroupMsgRequest>,
    ) -> Reply<pb::AfterSendGroupMsgResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSendGroupMsgCommand",
            send_id,
            group_id,
            client_msg_id
        )
    }

    async fn before_msg_modify(
        &self,
        request: Request<pb::BeforeMsgModifyRequest>,
    ) -> Reply<pb::BeforeMsgModifyResponse> {
        const COMMAND: &str = "callbackBeforeMsgModifyCommand";
        match self.mask_content_json(&request.get_ref().content) {
            Some(content) => modify(
                COMMAND,
                "blocked words masked",
                pb::BeforeMsgModifyResponse {
                    content: Some(content),
                    ..Default::default()
                },
            ),
            None => allow(COMMAND, "nothing to mask"),
        }
    }

    async fn after_msg_save_db(
        &self,
        request: Request<pb::AfterMsgSaveDbRequest>,
    ) -> Reply<pb::AfterMsgSaveDbResponse> {
        after_event!(
            self,
            request,
            "callbackAfterMsgSaveDBCommand",
            send_id,
            recv_id,
            group_id,
            seq
        )
    }

    async fn after_group_msg_read(
        &self,
        request: Request<pb::AfterGroupMsgReadRequest>,
    ) -> Reply<pb::AfterGroupMsgReadResponse> {
        after_event!(
            self,
            request,
            "callbackAfterGroupMsgReadCommand",
            send_id,
            unread_msg_num
        )
    }

    async fn after_single_msg_read(
        &self,
        request: Request<pb::AfterSingleMsgReadRequest>,
    ) -> Reply<pb::AfterSingleMsgReadResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSingleMsgReadCommand",
            conversation_id,
            user_id,
            seqs
        )
    }

    async fn after_revoke_msg(
        &self,
        request: Request<pb::AfterRevokeMsgRequest>,
    ) -> Reply<pb::AfterRevokeMsgResponse> {
        after_event!(
            self,
            request,
            "callbackBeforeAfterMsgCommand",
            conversation_id,
            seq,
            user_id
        )
    }
}

#[tonic::async_trait]
impl PushCallbackService for ExampleUpstream {}

#[tonic::async_trait]
impl UserCallbackService for ExampleUpstream {
    async fn after_update_user_info(
        &self,
        request: Request<pb::AfterUpdateUserInfoRequest>,
    ) -> Reply<pb::AfterUpdateUserInfoResponse> {
        after_event!(
            self,
            request,
            "callbackAfterUpdateUserInfoCommand",
            user_id,
            nickname
        )
    }

    async fn after_update_user_info_ex(
        &self,
        request: Request<pb::AfterUpdateUserInfoExRequest>,
    ) -> Reply<pb::AfterUpdateUserInfoExResponse> {
        after_event!(
            self,
            request,
            "callbackAfterUpdateUserInfoExCommand",
            user_id,
            nickname
        )
    }

    async fn before_user_register(
        &self,
        request: Request<pb::BeforeUserRegisterRequest>,
    ) -> Reply<pb::BeforeUserRegisterResponse> {
        const COMMAND: &str = "callbackBeforeUserRegisterCommand";
        let users = request.into_inner().users;
        // OpenIM replaces the whole list with a non-empty reply list, so return every user.
        match self.with_default_faces(users) {
            Some(users) => modify(
                COMMAND,
                "default avatar given",
                pb::BeforeUserRegisterResponse {
                    users,
                    ..Default::default()
                },
            ),
            None => allow(COMMAND, "every user has an avatar"),
        }
    }

    async fn after_user_register(
        &self,
        request: Request<pb::AfterUserRegisterRequest>,
    ) -> Reply<pb::AfterUserRegisterResponse> {
        after_event!(self, request, "callbackAfterUserRegisterCommand", users)
    }

    async fn after_user_online(
        &self,
        request: Request<pb::AfterUserOnlineRequest>,
    ) -> Reply<pb::AfterUserOnlineResponse> {
        after_event!(
            self,
            request,
            "callbackAfterUserOnlineCommand",
            user_id,
            platform
        )
    }

    async fn after_user_offline(
        &self,
        request: Request<pb::AfterUserOfflineRequest>,
    ) -> Reply<pb::AfterUserOfflineResponse> {
        after_event!(
            self,
            request,
            "callbackAfterUserOfflineCommand",
            user_id,
            platform
        )
    }

    async fn after_user_kick_off(
        &self,
        request: Request<pb::AfterUserKickOffRequest>,
    ) -> Reply<pb::AfterUserKickOffResponse> {
        after_event!(
            self,
            request,
            "callbackAfterUserKickOffCommand",
            user_id,
            platform
        )
    }
}

#[tonic::async_trait]
impl FriendCallbackService for ExampleUpstream {
    async fn after_add_friend(
        &self,
        request: Request<pb::AfterAddFriendRequest>,
    ) -> Reply<pb::AfterAddFriendResponse> {
        after_event!(
            self,
            request,
            "callbackAfterAddFriendCommand",
            from_user_id,
            to_user_id
        )
    }

    async fn after_add_friend_agree(
        &self,
        request: Request<pb::AfterAddFriendAgreeRequest>,
    ) -> Reply<pb::AfterAddFriendAgreeResponse> {
        after_event!(
            self,
            request,
            "callbackAfterAddFriendAgreeCommand",
            from_user_id,
            to_user_id,
            handle_result
        )
    }

    async fn after_delete_friend(
        &self,
        request: Request<pb::AfterDeleteFriendRequest>,
    ) -> Reply<pb::AfterDeleteFriendResponse> {
        after_event!(
            self,
            request,
            "callbackAfterDeleteFriendCommand",
            owner_user_id,
            friend_user_id
        )
    }

    async fn after_import_friends(
        &self,
        request: Request<pb::AfterImportFriendsRequest>,
    ) -> Reply<pb::AfterImportFriendsResponse> {
        after_event!(
            self,
            request,
            "callbackAfterImportFriendsCommand",
            owner_user_id,
            friend_user_ids
        )
    }

    async fn after_remove_black(
        &self,
        request: Request<pb::AfterRemoveBlackRequest>,
    ) -> Reply<pb::AfterRemoveBlackResponse> {
        after_event!(
            self,
            request,
            "callbackAfterRemoveBlackCommand",
            owner_user_id,
            black_user_id
        )
    }

    async fn before_set_friend_remark(
        &self,
        request: Request<pb::BeforeSetFriendRemarkRequest>,
    ) -> Reply<pb::BeforeSetFriendRemarkResponse> {
        const COMMAND: &str = "callbackBeforeSetFriendRemarkCommand";
        match self.mask(&request.get_ref().remark) {
            Some(remark) => modify(
                COMMAND,
                "blocked words masked",
                pb::BeforeSetFriendRemarkResponse {
                    remark: Some(remark),
                    ..Default::default()
                },
            ),
            None => allow(COMMAND, "nothing to mask"),
        }
    }

    async fn after_set_friend_remark(
        &self,
        request: Request<pb::AfterSetFriendRemarkRequest>,
    ) -> Reply<pb::AfterSetFriendRemarkResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSetFriendRemarkCommand",
            owner_user_id,
            friend_user_id
        )
    }
}

#[tonic::async_trait]
impl GroupCallbackService for ExampleUpstream {
    async fn before_create_group(
        &self,
        request: Request<pb::BeforeCreateGroupRequest>,
    ) -> Reply<pb::BeforeCreateGroupResponse> {
        const COMMAND: &str = "callbackBeforeCreateGroupCommand";
        let req = request.get_ref();
        if let Some(word) = self.blocked_word(&req.group_name) {
            return self.reject(COMMAND, "group name contains a blocked word", word);
        }
        if !req.ex.is_empty() {
            return allow(COMMAND, "ex already set");
        }
        modify(
            COMMAND,
            "new group tagged",
            pb::BeforeCreateGroupResponse {
                ex: Some(CREATED_VIA.to_owned()),
                ..Default::default()
            },
        )
    }

    async fn after_create_group(
        &self,
        request: Request<pb::AfterCreateGroupRequest>,
    ) -> Reply<pb::AfterCreateGroupResponse> {
        after_event!(
            self,
            request,
            "callbackAfterCreateGroupCommand",
            group_id,
            group_name,
            owner_user_id
        )
    }

    async fn after_set_group_member_info(
        &self,
        request: Request<pb::AfterSetGroupMemberInfoRequest>,
    ) -> Reply<pb::AfterSetGroupMemberInfoResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSetGroupMemberInfoCommand",
            group_id,
            user_id,
            role_level
        )
    }

    async fn after_quit_group(
        &self,
        request: Request<pb::AfterQuitGroupRequest>,
    ) -> Reply<pb::AfterQuitGroupResponse> {
        after_event!(
            self,
            request,
            "callbackAfterQuitGroupCommand",
            group_id,
            user_id
        )
    }

    async fn after_kick_group(
        &self,
        request: Request<pb::AfterKickGroupRequest>,
    ) -> Reply<pb::AfterKickGroupResponse> {
        after_event!(
            self,
            request,
            "callbackAfterKickGroupCommand",
            group_id,
            kicked_user_ids
        )
    }

    async fn after_dismiss_group(
        &self,
        request: Request<pb::AfterDismissGroupRequest>,
    ) -> Reply<pb::AfterDismissGroupResponse> {
        after_event!(
            self,
            request,
            "callbackAfterDisMissGroupCommand",
            group_id,
            owner_id
        )
    }

    async fn after_transfer_group_owner(
        &self,
        request: Request<pb::AfterTransferGroupOwnerRequest>,
    ) -> Reply<pb::AfterTransferGroupOwnerResponse> {
        after_event!(
            self,
            request,
            "callbackAfterTransferGroupOwnerCommand",
            group_id,
            old_owner_user_id,
            new_owner_user_id
        )
    }

    async fn after_join_group(
        &self,
        request: Request<pb::AfterJoinGroupRequest>,
    ) -> Reply<pb::AfterJoinGroupResponse> {
        after_event!(
            self,
            request,
            "callbackAfterJoinGroupCommand",
            group_id,
            join_source,
            inviter_user_id
        )
    }

    async fn after_set_group_info(
        &self,
        request: Request<pb::AfterSetGroupInfoRequest>,
    ) -> Reply<pb::AfterSetGroupInfoResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSetGroupInfoCommand",
            group_id,
            group_name
        )
    }

    async fn after_set_group_info_ex(
        &self,
        request: Request<pb::AfterSetGroupInfoExRequest>,
    ) -> Reply<pb::AfterSetGroupInfoExResponse> {
        after_event!(
            self,
            request,
            "callbackAfterSetGroupInfoExCommand",
            group_id,
            group_name
        )
    }
}

#[tonic::async_trait]
impl ConversationCallbackService for ExampleUpstream {
    async fn after_create_single_chat_conversations(
        &self,
        request: Request<pb::AfterCreateSingleChatConversationsRequest>,
    ) -> Reply<pb::AfterCreateSingleChatConversationsResponse> {
        after_event!(
            self,
            request,
            "callbackAfterCreateSingleChatConversationsCommand",
            owner_user_id,
            conversation_id
        )
    }

    async fn after_create_group_chat_conversations(
        &self,
        request: Request<pb::AfterCreateGroupChatConversationsRequest>,
    ) -> Reply<pb::AfterCreateGroupChatConversationsResponse> {
        after_event!(
            self,
            request,
            "callbackAfterCreateGroupChatConversationsCommand",
            group_id,
            conversation_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::group_callback_service_client::GroupCallbackServiceClient;

    fn example() -> ExampleUpstream {
        ExampleUpstream::new(ExampleConfig {
            blocked_words: vec!["spam".into(), String::new(), "Forbidden".into()],
            reject_code: 20042,
            default_face_url: "https://example.com/face.png".into(),
        })
    }

    #[test]
    fn finds_blocked_words_ignoring_case() {
        let ex = example();
        assert_eq!(ex.blocked_word("this is SPAM"), Some("spam"));
        assert_eq!(ex.blocked_word("a forbidden fruit"), Some("Forbidden"));
        assert_eq!(
            ex.blocked_word("hello"),
            None,
            "an empty blocked word matches nothing"
        );
        assert_eq!(ex.blocked_word(""), None);
    }

    #[test]
    fn masks_every_blocked_word() {
        let ex = example();
        assert_eq!(
            ex.mask("Spam, spam and FORBIDDEN eggs").as_deref(),
            Some("***, *** and *** eggs")
        );
        assert_eq!(ex.mask("ünïcode spam ✓").as_deref(), Some("ünïcode *** ✓"));
        assert_eq!(ex.mask("spa"), None);
        assert_eq!(ex.mask("clean"), None);
    }

    #[test]
    fn masks_message_content_as_a_json_object() {
        let ex = example();
        assert_eq!(
            ex.mask_content_json(r#"{"content":"buy SPAM now","z":1,"a":["spam",true]}"#)
                .as_deref(),
            Some(r#"{"content":"buy *** now","z":1,"a":["***",true]}"#),
            "string values masked, key order and other values kept"
        );
        assert_eq!(ex.mask_content_json(r#"{"content":"hello"}"#), None);
        assert_eq!(ex.mask_content_json(r#""spam""#), None, "not an object");
        assert_eq!(ex.mask_content_json("spam"), None, "not JSON");
    }

    #[test]
    fn gives_default_faces() {
        let ex = example();
        let user = |id: &str, face: &str| pb::UserInfo {
            user_id: id.into(),
            face_url: face.into(),
            ..Default::default()
        };
        let users = ex
            .with_default_faces(vec![user("a", ""), user("b", "https://b.png")])
            .unwrap();
        assert_eq!(users[0].face_url, "https://example.com/face.png");
        assert_eq!(users[1].face_url, "https://b.png");
        assert_eq!(
            ex.with_default_faces(vec![user("b", "https://b.png")]),
            None
        );
    }

    #[tokio::test]
    async fn rpcs_allow_reject_and_modify() {
        let ex = example();

        let rejected = ex
            .before_send_single_msg(Request::new(pb::BeforeSendSingleMsgRequest {
                content: r#"{"content":"cheap Spam"}"#.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            rejected.rejection,
            Some(pb::Rejection {
                code: 20042,
                message: "message contains a blocked word".into(),
                detail: "spam".into(),
            })
        );

        let created = ex
            .before_create_group(Request::new(pb::BeforeCreateGroupRequest {
                owner_user_id: "u1".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.rejection, None);
        assert_eq!(created.group_name, None, "the name is the user's");
        assert_eq!(created.ex.as_deref(), Some(CREATED_VIA));

        let modified = ex
            .before_msg_modify(Request::new(pb::BeforeMsgModifyRequest {
                content: r#"{"content":"no spam here"}"#.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            modified.content.as_deref(),
            Some(r#"{"content":"no *** here"}"#)
        );

        let set_info = ex
            .before_set_group_info(Request::new(pb::BeforeSetGroupInfoRequest {
                group_id: "g1".into(),
                group_name: "Rustaceans".into(),
                ..Default::default()
            }))
            .await
            .expect_err("not part of the policy");
        assert_eq!(
            set_info.code(),
            tonic::Code::Unimplemented,
            "the generated default stub: the gateway continues"
        );

        let mut after = Request::new(pb::AfterQuitGroupRequest::default());
        after
            .metadata_mut()
            .insert(meta::DELIVERY_ID, "d1".parse().unwrap());
        after
            .metadata_mut()
            .insert(meta::DELIVERY_ATTEMPT, "2".parse().unwrap());
        assert_eq!(delivery(after.metadata()), (Some("d1"), Some(2)));
        ex.after_quit_group(after).await.unwrap();
    }

    #[tokio::test]
    async fn serves_over_grpc() {
        let (addr, task) = spawn(example().cfg).await.unwrap();
        let mut client = GroupCallbackServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let reply = client
            .before_create_group(pb::BeforeCreateGroupRequest {
                group_name: "FORBIDDEN words".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.rejection.map(|r| (r.code, r.detail)),
            Some((20042, "Forbidden".to_owned()))
        );
        let unimplemented = client
            .before_join_group(pb::BeforeJoinGroupRequest::default())
            .await
            .expect_err("not part of the policy");
        assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);
        task.abort();
    }
}
