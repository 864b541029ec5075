//! Redaction, a leaf: whether user data is kept out of the logs, and how a text that can hold
//! user content is shown. Imports nothing of the crate, so the spool, the upstreams and the
//! inspector can use it without reaching up.

use std::sync::atomic::{AtomicBool, Ordering};

static REDACT: AtomicBool = AtomicBool::new(true);

/// Whether user data is kept out of the logs (`log.redact`, on unless [`super::init`] was told
/// otherwise).
pub fn redact() -> bool {
    REDACT.load(Ordering::Relaxed)
}

/// What a redacted value is logged as.
pub const REDACTED: &str = "<redacted>";

/// A text that can hold user content (a service's rejection message): itself, or [`REDACTED`].
pub fn user_text(text: &str) -> &str {
    if redact() { REDACTED } else { text }
}

/// Sets the redaction rule (`log.redact`); [`super::init`] calls it.
pub fn set_redact(on: bool) {
    REDACT.store(on, Ordering::Relaxed);
}

/// A spool delivery's failure text (or dead-letter reason) as the logs show it. The text stays
/// whole in the spool (`last_error`, for operators, beside the payload); in a log line the gRPC
/// status message the service sent (`… Unavailable: <message>`, as `crate::decision` words it)
/// is redacted, since it can echo user content.
pub fn delivery_error(text: &str) -> std::borrow::Cow<'_, str> {
    if !redact() {
        return text.into();
    }
    let mut from = 0;
    while let Some(at) = text[from..].find(": ").map(|i| from + i) {
        let word_start = text[..at].rfind(' ').map_or(0, |i| i + 1);
        let word = &text[word_start..at];
        if (0..=16).any(|n| format!("{:?}", tonic::Code::from_i32(n)) == word) {
            return format!("{}: {REDACTED}", &text[..at]).into();
        }
        from = at + 2;
    }
    text.into()
}
