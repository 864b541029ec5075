//! A few top-level fields of an encoded request, read straight from its protobuf bytes without
//! decoding the message (no allocation): what the gate's rules read (`sendID`, `recvID`,
//! `groupID`, `contentType`, `atUserList`), the body's `operationID`, and what OpenIM derives from them, the conversation
//! ID ([`conversation_id`], sent as `openim-conversation-id` metadata).
//!
//! [`FieldNumbers`] is resolved once per command from the request's descriptor; [`Fields`] scans
//! the payload each time a value is asked for (requests are a few hundred bytes).

use prost_reflect::{Kind, MessageDescriptor};

/// The top-level fields the gateway reads by name, with their field numbers in one request type
/// (`None`: the request has no such field, or it is not of the expected kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldNumbers {
    /// `sendID` (string).
    pub send_id: Option<u32>,
    /// `recvID` (string).
    pub recv_id: Option<u32>,
    /// `groupID` (string).
    pub group_id: Option<u32>,
    /// `contentType` (int32).
    pub content_type: Option<u32>,
    /// `sessionType` (int32).
    pub session_type: Option<u32>,
    /// `atUserList` (repeated string).
    pub at_user_list: Option<u32>,
    /// `operationID` (string): the log line's id when the header has none.
    pub operation_id: Option<u32>,
}

impl FieldNumbers {
    /// The numbers of `request`'s fields, by their JSON names.
    pub fn of(request: &MessageDescriptor) -> Self {
        let field = |json: &str, kind: fn(&Kind) -> bool, list: bool| {
            let f = request.get_field_by_json_name(json)?;
            (kind(&f.kind()) && f.is_list() == list).then(|| f.number())
        };
        let string = |k: &Kind| matches!(k, Kind::String);
        let int = |k: &Kind| matches!(k, Kind::Int32 | Kind::Int64 | Kind::Uint32);
        Self {
            send_id: field("sendID", string, false),
            recv_id: field("recvID", string, false),
            group_id: field("groupID", string, false),
            content_type: field("contentType", int, false),
            session_type: field("sessionType", int, false),
            at_user_list: field("atUserList", string, true),
            operation_id: field("operationID", string, false),
        }
    }

    /// Whether the request carries the field of this JSON name (one of the above).
    pub fn has(&self, json: &str) -> bool {
        match json {
            "sendID" => self.send_id.is_some(),
            "recvID" => self.recv_id.is_some(),
            "groupID" => self.group_id.is_some(),
            "contentType" => self.content_type.is_some(),
            "sessionType" => self.session_type.is_some(),
            "atUserList" => self.at_user_list.is_some(),
            "operationID" => self.operation_id.is_some(),
            _ => false,
        }
    }
}

/// The fields of one encoded request.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    payload: &'a [u8],
    numbers: &'a FieldNumbers,
}

impl<'a> Fields<'a> {
    /// The fields of `payload`, an encoded request whose numbers are `numbers`.
    pub fn new(payload: &'a [u8], numbers: &'a FieldNumbers) -> Self {
        Self { payload, numbers }
    }

    /// The last value of string field `number` (proto3: the last one wins), `""` when absent.
    fn string(&self, number: Option<u32>) -> &'a str {
        let Some(n) = number else { return "" };
        let mut last = "";
        for (num, value) in Scan(self.payload) {
            if num == n
                && let Value::Bytes(b) = value
            {
                last = std::str::from_utf8(b).unwrap_or("");
            }
        }
        last
    }

    fn int(&self, number: Option<u32>) -> i64 {
        let Some(n) = number else { return 0 };
        let mut last = 0;
        for (num, value) in Scan(self.payload) {
            if num == n
                && let Value::Varint(v) = value
            {
                // int32 is sign-extended to 64 bits on the wire.
                last = v as i64;
            }
        }
        last
    }

    /// `sendID`.
    pub fn send_id(&self) -> &'a str {
        self.string(self.numbers.send_id)
    }

    /// `recvID`.
    pub fn recv_id(&self) -> &'a str {
        self.string(self.numbers.recv_id)
    }

    /// `groupID`.
    pub fn group_id(&self) -> &'a str {
        self.string(self.numbers.group_id)
    }

    /// `operationID`.
    pub fn operation_id(&self) -> &'a str {
        self.string(self.numbers.operation_id)
    }

    /// `contentType`.
    pub fn content_type(&self) -> i64 {
        self.int(self.numbers.content_type)
    }

    /// `sessionType`.
    pub fn session_type(&self) -> i64 {
        self.int(self.numbers.session_type)
    }

    /// The entries of `atUserList`.
    pub fn at_user_list(&self) -> impl Iterator<Item = &'a str> + 'a {
        let n = self.numbers.at_user_list;
        Scan(self.payload).filter_map(move |(num, value)| match value {
            Value::Bytes(b) if Some(num) == n => std::str::from_utf8(b).ok(),
            _ => None,
        })
    }
}

/// One field's value on the wire.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// The top-level fields of an encoded message, in order; stops at the first malformed byte.
struct Scan<'a>(&'a [u8]);

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        out |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(out);
        }
    }
    None
}

impl<'a> Iterator for Scan<'a> {
    type Item = (u32, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = self.0;
        let key = varint(&mut buf)?;
        let number = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (bytes, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Value::Bytes(bytes)
            }
            5 => {
                buf = buf.get(4..)?;
                Value::Other
            }
            _ => return None,
        };
        self.0 = buf;
        Some((number, value))
    }
}

/// The conversation ID OpenIM computes for a message (`GetConversationIDByMsg`,
/// `pkg/msgprocessor/conversation.go`): `si_` + the sorted send and receive IDs joined by `_`
/// for a single chat (session type 1), `g_` + the group ID for a group (2), `sg_` + the group ID
/// for a super group (3), `sn_` + the sorted IDs for a notification chat (4). OpenIM gives the
/// `n_` forms only when the message's options say it is a notification; no message callback
/// carries the options, and OpenIM's default is "not a notification", so these are the forms
/// given. `None` for another session type.
pub fn conversation_id(fields: &Fields<'_>) -> Option<String> {
    let sorted = || {
        let (a, b) = (fields.send_id(), fields.recv_id());
        if a <= b { (a, b) } else { (b, a) }
    };
    match fields.session_type() {
        1 => {
            let (a, b) = sorted();
            Some(format!("si_{a}_{b}"))
        }
        2 => Some(format!("g_{}", fields.group_id())),
        3 => Some(format!("sg_{}", fields.group_id())),
        4 => {
            let (a, b) = sorted();
            Some(format!("sn_{a}_{b}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(m: &impl prost::Message) -> Vec<u8> {
        m.encode_to_vec()
    }

    fn request() -> MessageDescriptor {
        crate::proto::pool()
            .expect("pool")
            .get_message_by_name("openim.callback.v1.AfterSendSingleMsgRequest")
            .expect("message")
    }

    #[test]
    fn reads_the_named_fields_of_an_encoded_request() {
        use crate::proto::v1::AfterSendSingleMsgRequest;
        let numbers = FieldNumbers::of(&request());
        assert!(numbers.has("sendID") && numbers.has("atUserList") && !numbers.has("groupID"));
        let bytes = message(&AfterSendSingleMsgRequest {
            send_id: "u2".into(),
            recv_id: "u1".into(),
            content_type: 101,
            session_type: 1,
            at_user_id_list: vec!["bot".into(), "AtAllTag".into()],
            content: "x".repeat(300),
            ..Default::default()
        });
        let f = Fields::new(&bytes, &numbers);
        assert_eq!((f.send_id(), f.recv_id(), f.group_id()), ("u2", "u1", ""));
        assert_eq!(f.content_type(), 101);
        assert_eq!(f.at_user_list().collect::<Vec<_>>(), ["bot", "AtAllTag"]);
        // A truncated payload reads as far as it goes, never panics.
        let cut = Fields::new(&bytes[..bytes.len() - 3], &numbers);
        let _ = (
            cut.send_id(),
            cut.content_type(),
            cut.at_user_list().count(),
        );
    }

    #[test]
    fn conversation_ids_are_openims() {
        use crate::proto::v1::AfterSendSingleMsgRequest;
        let numbers = FieldNumbers::of(&request());
        let id = |session_type, send: &str, recv: &str| {
            let bytes = message(&AfterSendSingleMsgRequest {
                send_id: send.into(),
                recv_id: recv.into(),
                session_type,
                ..Default::default()
            });
            conversation_id(&Fields::new(&bytes, &numbers))
        };
        // OpenIM: sort.Strings([]string{SendID, RecvID}), joined by "_".
        assert_eq!(
            id(1, "7716190472", "5283014967").as_deref(),
            Some("si_5283014967_7716190472")
        );
        assert_eq!(id(1, "a", "b").as_deref(), Some("si_a_b"));
        assert_eq!(id(4, "z", "m").as_deref(), Some("sn_m_z"));
        assert_eq!(id(5, "a", "b"), None);
        let group = crate::proto::pool()
            .expect("pool")
            .get_message_by_name("openim.callback.v1.AfterSendGroupMsgRequest")
            .expect("message");
        let numbers = FieldNumbers::of(&group);
        let bytes = message(&crate::proto::v1::AfterSendGroupMsgRequest {
            group_id: "3411007805".into(),
            session_type: 3,
            ..Default::default()
        });
        assert_eq!(
            conversation_id(&Fields::new(&bytes, &numbers)).as_deref(),
            Some("sg_3411007805")
        );
        let bytes = message(&crate::proto::v1::AfterSendGroupMsgRequest {
            group_id: "g1".into(),
            session_type: 2,
            ..Default::default()
        });
        assert_eq!(
            conversation_id(&Fields::new(&bytes, &numbers)).as_deref(),
            Some("g_g1")
        );
    }
}
