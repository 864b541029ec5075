//! Why a delivery attempt failed, as data: [`Fault`] (a code and a message, what a
//! [`DeliveryResult`](super::DeliveryResult) carries) and [`Attempt`] (one entry of a record's
//! attempt history, the last [`HISTORY_MAX`] of which both backends keep with the record).
//!
//! The spool keeps the code and the message apart; the text is produced where it is shown: the
//! whole text in `last_error` (for operators, beside the payload), the log's text with a
//! service's status message redacted ([`Fault::log_text`]).

use serde::{Deserialize, Serialize};

/// Most attempts a record's history keeps: the latest ones (older entries are dropped).
pub const HISTORY_MAX: usize = 20;

/// Why one delivery attempt failed, or was not made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The gRPC status code name the service answered with (`UNAVAILABLE`, upper case), or the
    /// kind of a failure without a status, lower case: `timeout`, `unreachable`, `reset`,
    /// `breaker_open`, `max_concurrency`, `not_serving`, `no_route`, `disabled`, `task_failed`…
    pub code: String,
    /// For a status, the status message the service sent (user content: the logs redact it);
    /// otherwise the whole description of the failure.
    pub message: String,
}

impl Fault {
    /// The service answered with the status `code_name` (`UNAVAILABLE`) and `message`.
    pub fn status(code_name: &str, message: impl Into<String>) -> Fault {
        Fault {
            code: code_name.to_owned(),
            message: message.into(),
        }
    }

    /// A failure without a status, of the lower-case `kind` (`timeout`), described by `message`.
    pub fn local(kind: &str, message: impl Into<String>) -> Fault {
        Fault {
            code: kind.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the service answered with a status (its message is then the service's text).
    pub fn is_status(&self) -> bool {
        is_status_code(&self.code)
    }

    /// The whole text, as `last_error` keeps it: `Unavailable: <the service's message>` for a
    /// status, the message otherwise.
    pub fn text(&self) -> String {
        self.worded(&self.message)
    }

    /// The text as the logs show it: a service's status message is redacted unless
    /// `log.redact: false`.
    pub fn log_text(&self) -> String {
        if self.is_status() {
            self.worded(crate::telemetry::user_text(&self.message))
        } else {
            self.message.clone()
        }
    }

    fn worded(&self, message: &str) -> String {
        if self.is_status() {
            format!("{}: {message}", camel(&self.code))
        } else {
            message.to_owned()
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// Whether `code` names a gRPC status (`UNAVAILABLE`) rather than a local failure kind.
fn is_status_code(code: &str) -> bool {
    !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// `DEADLINE_EXCEEDED` -> `DeadlineExceeded` (how the spool's texts have always named a status).
fn camel(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    for word in code.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars.map(|c| c.to_ascii_lowercase()));
        }
    }
    out
}

/// One failed delivery attempt of a stored event, kept in its record (field numbers are the file
/// format: never renumber or reuse one).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt's number, from 1 (restarts at 1 after a replay).
    #[prost(uint32, tag = "1")]
    pub number: u32,
    /// When the attempt ended, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub at_ms: u64,
    /// The gRPC status code name or the local failure kind ([`Fault::code`]).
    #[prost(string, tag = "3")]
    pub code: String,
    /// The message ([`Fault::message`]); whole, as `last_error` is.
    #[prost(string, tag = "4")]
    pub message: String,
}

impl Attempt {
    /// Attempt `number` that ended at `at_ms` with `fault`.
    pub fn new(number: u32, at_ms: u64, fault: &Fault) -> Attempt {
        Attempt {
            number,
            at_ms,
            code: fault.code.clone(),
            message: fault.message.clone(),
        }
    }

    /// The failure of this attempt.
    pub fn fault(&self) -> Fault {
        Fault {
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }

    /// The message as the logs show it (a service's status message redacted unless
    /// `log.redact: false`).
    pub fn log_message(&self) -> &str {
        if is_status_code(&self.code) {
            crate::telemetry::user_text(&self.message)
        } else {
            &self.message
        }
    }
}

/// Appends `attempt` to `history`, keeping the latest [`HISTORY_MAX`].
pub(crate) fn push(history: &mut Vec<Attempt>, attempt: Attempt) {
    history.push(attempt);
    if history.len() > HISTORY_MAX {
        let extra = history.len() - HISTORY_MAX;
        history.drain(..extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_reads_as_the_spool_always_wrote_it() {
        let s = Fault::status("DEADLINE_EXCEEDED", "slow");
        assert!(s.is_status());
        assert_eq!(s.text(), "DeadlineExceeded: slow");
        assert_eq!(s.log_text(), "DeadlineExceeded: <redacted>");
        let l = Fault::local("timeout", "upstream did not answer within 1s");
        assert!(!l.is_status());
        assert_eq!(l.text(), "upstream did not answer within 1s");
        assert_eq!(l.log_text(), l.text());
    }

    #[test]
    fn the_history_keeps_the_latest_attempts() {
        let mut h = Vec::new();
        for n in 1..=25 {
            push(
                &mut h,
                Attempt::new(n, u64::from(n), &Fault::local("timeout", "t")),
            );
        }
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h[0].number, 6);
        assert_eq!(h[HISTORY_MAX - 1].number, 25);
    }

    #[test]
    fn a_record_without_history_still_decodes() {
        use prost::Message as _;
        let old = super::super::record::RecordHead {
            command: "c".into(),
            order_key: None,
            first_seen_ms: 7,
        }
        .encode_to_vec();
        let rec = super::super::record::Record::decode(old.as_slice()).expect("decodes");
        assert!(rec.history.is_empty());
        assert_eq!(rec.first_seen_ms, 7);
    }
}
