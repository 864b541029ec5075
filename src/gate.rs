//! The gate: request-side rules that answer a callback at once, without calling the service.
//! Each command's [`Gate`] is built once per snapshot from its settings (`only:`, `skip:`, and
//! the top-level `bots:`) and holds the rules that apply to its request: a condition set under
//! `defaults` applies to the commands whose request carries the fields it reads; one set under
//! `commands.<command>` on a field the command lacks is refused by the config's validation.
//!
//! A rule is one type implementing [`Rule`]: its name (the `rule` label of
//! `gateway_held_back_total`), the request fields it reads, and one function saying whether a
//! callback is held back. It reads the fields from the encoded request ([`crate::fields`]),
//! allocating nothing. A held-back before callback continues (with the echo rules OpenIM needs);
//! a held-back after callback is acknowledged and not spooled.

use crate::config::{CommandConfig, ContentTypes};
use crate::fields::{FieldNumbers, Fields};
use std::sync::Arc;

/// One request-side rule.
pub trait Rule: Send + Sync + std::fmt::Debug {
    /// The rule's name, as configured (`skip.from_bots`).
    fn name(&self) -> &'static str;
    /// The request fields it reads (their JSON names).
    fn reads(&self) -> &'static [&'static str];
    /// Whether it applies to a request with these fields (by default: it carries all it reads).
    fn applies(&self, numbers: &FieldNumbers) -> bool {
        self.reads().iter().all(|f| numbers.has(f))
    }
    /// Whether this callback is held back.
    fn holds_back(&self, fields: &Fields<'_>) -> bool;
}

/// The rules of one command, in order; the first that holds a callback back names it.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    numbers: FieldNumbers,
    rules: Vec<Arc<dyn Rule>>,
}

impl Gate {
    /// The rules of `settings` that apply to a request with `numbers` (the others are left out:
    /// a `defaults` condition on a field this command does not carry).
    pub fn build(settings: &CommandConfig, bots: &[String], numbers: FieldNumbers) -> Self {
        let bots: Arc<[String]> = bots.into();
        let only = &settings.only;
        let skip = &settings.skip;
        let mut rules: Vec<Arc<dyn Rule>> = Vec::new();
        if skip.notifications {
            rules.push(Arc::new(SkipNotifications));
        }
        if skip.from_bots {
            rules.push(Arc::new(SkipFromBots(bots.clone())));
        }
        for (name, field, patterns) in [
            ("skip.send_ids", Id::Send, &skip.send_ids),
            ("skip.recv_ids", Id::Recv, &skip.recv_ids),
            ("skip.group_ids", Id::Group, &skip.group_ids),
        ] {
            if !patterns.is_empty() {
                rules.push(Arc::new(SkipIds {
                    name,
                    field,
                    patterns: patterns.clone(),
                }));
            }
        }
        if !skip.content_types.is_empty() {
            rules.push(Arc::new(SkipContentTypes(skip.content_types.clone())));
        }
        // `only` after `skip`, so that a held-back callback is named by the most telling rule.
        if !only.content_types.is_empty() {
            rules.push(Arc::new(OnlyContentTypes(only.content_types.clone())));
        }
        if only.to_bots {
            rules.push(Arc::new(OnlyToBots {
                bots: bots.clone(),
                at_all: only.at_all,
            }));
        }
        rules.retain(|r| r.applies(&numbers));
        Self { numbers, rules }
    }

    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules' names, for `routes`.
    pub fn names(&self) -> Vec<&'static str> {
        self.rules.iter().map(|r| r.name()).collect()
    }

    /// The name of the first rule that holds back the request encoded as `payload`, if any.
    pub fn check(&self, payload: &[u8]) -> Option<&'static str> {
        let fields = Fields::new(payload, &self.numbers);
        self.rules
            .iter()
            .find(|r| r.holds_back(&fields))
            .map(|r| r.name())
    }
}

/// `only.content_types`.
#[derive(Debug)]
struct OnlyContentTypes(Vec<ContentTypes>);

impl Rule for OnlyContentTypes {
    fn name(&self) -> &'static str {
        "only.content_types"
    }
    fn reads(&self) -> &'static [&'static str] {
        &["contentType"]
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        let t = f.content_type();
        !self.0.iter().any(|c| c.contains(t))
    }
}

/// `only.to_bots` (with `only.at_all`).
#[derive(Debug)]
struct OnlyToBots {
    bots: Arc<[String]>,
    at_all: bool,
}

/// What OpenIM puts in `atUserList` for an @-everyone.
const AT_ALL: &str = "AtAllTag";

impl Rule for OnlyToBots {
    fn name(&self) -> &'static str {
        "only.to_bots"
    }
    fn reads(&self) -> &'static [&'static str] {
        &["recvID", "atUserList"]
    }
    /// A single message has `recvID`, a group message `atUserList`: either will do.
    fn applies(&self, numbers: &FieldNumbers) -> bool {
        self.reads().iter().any(|f| numbers.has(f))
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        let is_bot = |id: &str| self.bots.iter().any(|b| b == id);
        let addressed = is_bot(f.recv_id())
            || f.at_user_list()
                .any(|id| is_bot(id) || (self.at_all && id == AT_ALL));
        !addressed
    }
}

/// `skip.notifications`: OpenIM's notification content types.
#[derive(Debug)]
struct SkipNotifications;

impl Rule for SkipNotifications {
    fn name(&self) -> &'static str {
        "skip.notifications"
    }
    fn reads(&self) -> &'static [&'static str] {
        &["contentType"]
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        (1000..=5000).contains(&f.content_type())
    }
}

/// `skip.from_bots`: the loop guard.
#[derive(Debug)]
struct SkipFromBots(Arc<[String]>);

impl Rule for SkipFromBots {
    fn name(&self) -> &'static str {
        "skip.from_bots"
    }
    fn reads(&self) -> &'static [&'static str] {
        &["sendID"]
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        let sender = f.send_id();
        self.0.iter().any(|b| b == sender)
    }
}

#[derive(Debug, Clone, Copy)]
enum Id {
    Send,
    Recv,
    Group,
}

/// `skip.send_ids`, `skip.recv_ids`, `skip.group_ids`.
#[derive(Debug)]
struct SkipIds {
    name: &'static str,
    field: Id,
    patterns: Vec<String>,
}

impl Rule for SkipIds {
    fn name(&self) -> &'static str {
        self.name
    }
    fn reads(&self) -> &'static [&'static str] {
        match self.field {
            Id::Send => &["sendID"],
            Id::Recv => &["recvID"],
            Id::Group => &["groupID"],
        }
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        let id = match self.field {
            Id::Send => f.send_id(),
            Id::Recv => f.recv_id(),
            Id::Group => f.group_id(),
        };
        self.patterns.iter().any(|p| matches(p, id))
    }
}

/// `skip.content_types`.
#[derive(Debug)]
struct SkipContentTypes(Vec<ContentTypes>);

impl Rule for SkipContentTypes {
    fn name(&self) -> &'static str {
        "skip.content_types"
    }
    fn reads(&self) -> &'static [&'static str] {
        &["contentType"]
    }
    fn holds_back(&self, f: &Fields<'_>) -> bool {
        let t = f.content_type();
        self.0.iter().any(|c| c.contains(t))
    }
}

/// Whether `id` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, id: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = id.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::AfterSendSingleMsgRequest;
    use prost::Message as _;

    fn gate(json: &str, bots: &[&str]) -> Gate {
        let settings: CommandConfig = serde_json::from_str(json).expect("settings");
        let desc = crate::proto::pool()
            .expect("pool")
            .get_message_by_name("openim.callback.v1.AfterSendSingleMsgRequest")
            .expect("message");
        let bots: Vec<String> = bots.iter().map(|b| (*b).to_owned()).collect();
        Gate::build(&settings, &bots, FieldNumbers::of(&desc))
    }

    fn msg(send: &str, recv: &str, content_type: i32, at: &[&str]) -> Vec<u8> {
        AfterSendSingleMsgRequest {
            send_id: send.into(),
            recv_id: recv.into(),
            content_type,
            at_user_id_list: at.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_bot_preset_forwards_only_what_the_bot_should_see() {
        let g = gate(
            r#"{"only": {"to_bots": true, "content_types": [101, 106]}, "skip": {"from_bots": true, "notifications": true}}"#,
            &["bot_1"],
        );
        assert_eq!(g.check(&msg("u1", "bot_1", 101, &[])), None, "to the bot");
        assert_eq!(
            g.check(&msg("u1", "u2", 101, &[])),
            Some("only.to_bots"),
            "not addressed to the bot"
        );
        assert_eq!(
            g.check(&msg("u1", "u2", 106, &["bot_1"])),
            None,
            "@-mentions the bot"
        );
        assert_eq!(
            g.check(&msg("u1", "u2", 106, &["AtAllTag"])),
            Some("only.to_bots"),
            "@everyone does not count without at_all"
        );
        assert_eq!(
            g.check(&msg("bot_1", "bot_1", 101, &[])),
            Some("skip.from_bots"),
            "the loop guard"
        );
        assert_eq!(
            g.check(&msg("u1", "bot_1", 102, &[])),
            Some("only.content_types"),
            "a picture"
        );
        let at_all = gate(r#"{"only": {"to_bots": true, "at_all": true}}"#, &["bot_1"]);
        assert_eq!(at_all.check(&msg("u1", "u2", 106, &["AtAllTag"])), None);
    }

    #[test]
    fn notifications_ids_and_content_type_ranges_are_skipped() {
        let g = gate(
            r#"{"skip": {"notifications": true, "send_ids": ["system_*"], "content_types": ["110-114"]}}"#,
            &[],
        );
        assert_eq!(
            g.check(&msg("u1", "u2", 1400, &[])),
            Some("skip.notifications")
        );
        assert_eq!(
            g.check(&msg("u1", "u2", 2200, &[])),
            Some("skip.notifications")
        );
        assert_eq!(
            g.check(&msg("system_admin", "u2", 101, &[])),
            Some("skip.send_ids")
        );
        assert_eq!(
            g.check(&msg("u1", "u2", 113, &[])),
            Some("skip.content_types")
        );
        assert_eq!(g.check(&msg("u1", "u2", 101, &[])), None);
    }

    #[test]
    fn conditions_on_fields_a_request_lacks_are_left_out() {
        let settings: CommandConfig =
            serde_json::from_str(r#"{"skip": {"group_ids": ["g1"], "from_bots": true}}"#)
                .expect("settings");
        let desc = crate::proto::pool()
            .expect("pool")
            .get_message_by_name("openim.callback.v1.AfterQuitGroupRequest")
            .expect("message");
        let g = Gate::build(&settings, &["bot".into()], FieldNumbers::of(&desc));
        assert_eq!(
            g.names(),
            ["skip.group_ids"],
            "quitting a group has no sendID"
        );
    }

    #[test]
    fn patterns_match_with_stars() {
        for (p, id, m) in [
            ("bot_*", "bot_1", true),
            ("bot_*", "xbot_1", false),
            ("*_test", "u_test", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXc", false),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("*", "", true),
            ("a*a", "a", false),
        ] {
            assert_eq!(matches(p, id), m, "{p} ~ {id}");
        }
    }
}
