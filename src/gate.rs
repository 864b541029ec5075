//! The gate: the stage of the request path whose rules may answer a callback at once, without
//! calling the service (`crate::pipeline` runs it after decoding, before routing).
//!
//! A rule is one type implementing [`Rule`]: it sees the callback as an [`Arrival`] and either
//! answers with the [`Decision`] OpenIM gets, or lets the callback go on. Adding one is that
//! type, its function, its unit test and one line in [`Gate::build`]; the pipeline does not
//! change. Each command's [`Gate`] is built once per snapshot and runs, in order:
//!
//! 1. [`Shed`]: the callback got no `limits.max_in_flight` slot (its body was drained, not kept):
//!    the command's failure policy.
//! 2. [`Disabled`]: the command has no upstream: continue.
//! 3. [`Conditions`]: the field conditions of `only:`, `skip:` and the top-level `bots:`, each a
//!    [`Condition`], whose first match holds the callback back. A condition set under `defaults`
//!    applies to the commands whose request carries the fields it reads; one set under
//!    `commands.<command>` on a field the command lacks is refused by the config's validation. A
//!    condition reads the fields from the encoded request ([`crate::fields`]), allocating
//!    nothing. A held-back before callback continues (with the echo rules OpenIM needs); a
//!    held-back after callback is acknowledged and not spooled.

use crate::config::{CommandConfig, ContentTypes};
use crate::decision::{self, Decision, Failure, Policy, Reason};
use crate::fields::{FieldNumbers, Fields};
use std::sync::Arc;

/// A callback as the gate sees it: decoded, not yet routed.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The command.
    pub command: &'static str,
    /// The operationID (header, else body), for the rules' log lines.
    pub operation_id: &'a str,
    /// Whether it got a `limits.max_in_flight` slot.
    pub admitted: bool,
    /// Whether the command has an upstream.
    pub enabled: bool,
    /// The request, protobuf-encoded (empty when it was not kept).
    pub payload: &'a [u8],
    /// The command's failure policy.
    pub policy: &'a Policy,
}

/// One rule of the gate.
pub trait Rule: Send + Sync + std::fmt::Debug {
    /// The rule's name, for `routes` and the logs.
    fn name(&self) -> &'static str;
    /// The answer for this callback, or `None` to let it go on.
    fn answer(&self, arrival: &Arrival<'_>) -> Option<Decision>;
}

/// A field condition of `only:` / `skip:`: whether a request is held back.
pub trait Condition: Send + Sync + std::fmt::Debug {
    /// The condition's name, as configured (`skip.from_bots`): the `rule` label of
    /// `gateway_held_back_total`.
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

/// The rules of one command, in order; the first that answers decides.
#[derive(Debug, Clone)]
pub struct Gate {
    rules: Vec<Arc<dyn Rule>>,
    conditions: Arc<Conditions>,
}

impl Gate {
    /// The gate of a command with `settings`; `numbers`: where its request's fields sit (the
    /// conditions on fields it lacks are left out: a `defaults` condition on a field this
    /// command does not carry).
    pub fn build(settings: &CommandConfig, bots: &[String], numbers: FieldNumbers) -> Self {
        let conditions = Arc::new(Conditions::build(settings, bots, numbers));
        let mut rules: Vec<Arc<dyn Rule>> = vec![Arc::new(Shed), Arc::new(Disabled)];
        if !conditions.is_empty() {
            rules.push(conditions.clone());
        }
        Self { rules, conditions }
    }

    /// The first rule's answer for `arrival`, or `None`: on to the service.
    pub fn check(&self, arrival: &Arrival<'_>) -> Option<Decision> {
        self.rules.iter().find_map(|r| r.answer(arrival))
    }

    /// The names of the field conditions, for `routes`.
    pub fn names(&self) -> Vec<&'static str> {
        self.conditions.names()
    }

    /// The name of the first field condition that holds back the request encoded as
    /// `payload`, if any.
    pub fn held_back(&self, payload: &[u8]) -> Option<&'static str> {
        self.conditions.held_back(payload)
    }
}

/// Over `limits.max_in_flight`: the callback was not handled; the failure policy answers.
#[derive(Debug)]
pub struct Shed;

impl Rule for Shed {
    fn name(&self) -> &'static str {
        "limits.max_in_flight"
    }
    fn answer(&self, a: &Arrival<'_>) -> Option<Decision> {
        if a.admitted {
            return None;
        }
        metrics::counter!("gateway_limit_total", "limit" => "max_in_flight").increment(1);
        metrics::counter!("gateway_resilience_trips_total", "control" => "max_in_flight", "upstream" => "")
            .increment(1);
        Some(decision::fail(
            Failure::Overloaded("over limits.max_in_flight".into()),
            a.policy,
        ))
    }
}

/// A command without an upstream (`enabled: false`): continue.
#[derive(Debug)]
pub struct Disabled;

impl Rule for Disabled {
    fn name(&self) -> &'static str {
        "disabled"
    }
    fn answer(&self, a: &Arrival<'_>) -> Option<Decision> {
        (!a.enabled).then(|| Decision::continue_for(Reason::Disabled))
    }
}

/// The field conditions of one command (`only:`, `skip:`, `bots:`), in order; the first that
/// holds a callback back names it.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    numbers: FieldNumbers,
    conditions: Vec<Arc<dyn Condition>>,
}

impl Rule for Conditions {
    fn name(&self) -> &'static str {
        "conditions"
    }
    fn answer(&self, a: &Arrival<'_>) -> Option<Decision> {
        let rule = self.held_back(a.payload)?;
        metrics::counter!("gateway_held_back_total", "command" => a.command, "rule" => rule)
            .increment(1);
        tracing::debug!(
            command = a.command,
            operation_id = a.operation_id,
            rule,
            "held back by a rule: answered without calling the service"
        );
        Some(Decision::continue_for(Reason::HeldBack(rule)))
    }
}

impl Conditions {
    /// The conditions of `settings` that apply to a request with `numbers`.
    pub fn build(settings: &CommandConfig, bots: &[String], numbers: FieldNumbers) -> Self {
        let bots: Arc<[String]> = bots.into();
        let only = &settings.only;
        let skip = &settings.skip;
        let mut rules: Vec<Arc<dyn Condition>> = Vec::new();
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
        Self {
            numbers,
            conditions: rules,
        }
    }

    /// Whether there is any condition.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The conditions' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.conditions.iter().map(|r| r.name()).collect()
    }

    /// The name of the first condition that holds back the request encoded as `payload`.
    pub fn held_back(&self, payload: &[u8]) -> Option<&'static str> {
        let fields = Fields::new(payload, &self.numbers);
        self.conditions
            .iter()
            .find(|r| r.holds_back(&fields))
            .map(|r| r.name())
    }
}

/// `only.content_types`.
#[derive(Debug)]
struct OnlyContentTypes(Vec<ContentTypes>);

impl Condition for OnlyContentTypes {
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

impl Condition for OnlyToBots {
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

impl Condition for SkipNotifications {
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

impl Condition for SkipFromBots {
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

impl Condition for SkipIds {
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

impl Condition for SkipContentTypes {
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
    fn shedding_comes_first_then_a_disabled_command_then_the_conditions() {
        let g = gate(r#"{"skip": {"from_bots": true}}"#, &["bot_1"]);
        let policy = Policy {
            on_failure: crate::config::FailurePolicy::Reject,
            reject_code: 5001,
            reject_message: "busy".into(),
            allow_offline_push_info: false,
        };
        let from_bot = msg("bot_1", "u2", 101, &[]);
        let arrival = |admitted, enabled, payload: &'static [u8]| {
            let a = Arrival {
                command: "callbackAfterSendSingleMsgCommand",
                operation_id: "op",
                admitted,
                enabled,
                payload,
                policy: &policy,
            };
            g.check(&a)
                .map(|d| (d.outcome(), d.failure().map(Failure::label)))
        };
        let from_bot: &'static [u8] = Box::leak(from_bot.into_boxed_slice());
        // Not admitted: the failure policy, whatever else holds (the body was not kept).
        assert_eq!(
            arrival(false, false, &[]),
            Some(("failed-closed", Some("overloaded")))
        );
        // Disabled before any condition.
        assert_eq!(arrival(true, false, from_bot), Some(("continue", None)));
        assert_eq!(arrival(true, true, from_bot), Some(("held-back", None)));
        // Nothing holds: on to the service.
        let to_bot: &'static [u8] = Box::leak(msg("u1", "bot_1", 101, &[]).into_boxed_slice());
        assert_eq!(arrival(true, true, to_bot), None);
    }

    #[test]
    fn the_bot_preset_forwards_only_what_the_bot_should_see() {
        let g = gate(
            r#"{"only": {"to_bots": true, "content_types": [101, 106]}, "skip": {"from_bots": true, "notifications": true}}"#,
            &["bot_1"],
        );
        assert_eq!(
            g.held_back(&msg("u1", "bot_1", 101, &[])),
            None,
            "to the bot"
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 101, &[])),
            Some("only.to_bots"),
            "not addressed to the bot"
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 106, &["bot_1"])),
            None,
            "@-mentions the bot"
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 106, &["AtAllTag"])),
            Some("only.to_bots"),
            "@everyone does not count without at_all"
        );
        assert_eq!(
            g.held_back(&msg("bot_1", "bot_1", 101, &[])),
            Some("skip.from_bots"),
            "the loop guard"
        );
        assert_eq!(
            g.held_back(&msg("u1", "bot_1", 102, &[])),
            Some("only.content_types"),
            "a picture"
        );
        let at_all = gate(r#"{"only": {"to_bots": true, "at_all": true}}"#, &["bot_1"]);
        assert_eq!(at_all.held_back(&msg("u1", "u2", 106, &["AtAllTag"])), None);
    }

    #[test]
    fn notifications_ids_and_content_type_ranges_are_skipped() {
        let g = gate(
            r#"{"skip": {"notifications": true, "send_ids": ["system_*"], "content_types": ["110-114"]}}"#,
            &[],
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 1400, &[])),
            Some("skip.notifications")
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 2200, &[])),
            Some("skip.notifications")
        );
        assert_eq!(
            g.held_back(&msg("system_admin", "u2", 101, &[])),
            Some("skip.send_ids")
        );
        assert_eq!(
            g.held_back(&msg("u1", "u2", 113, &[])),
            Some("skip.content_types")
        );
        assert_eq!(g.held_back(&msg("u1", "u2", 101, &[])), None);
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
