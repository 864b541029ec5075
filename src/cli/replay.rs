//! `openim-callback-gateway replay FILE --to URL`: a capture (`GET /admin/callbacks?format=jsonl`
//! or `tail --jsonl`, taken with `inspect.capture_bodies: true` and `log.redact: false`) sent
//! again as OpenIM would (`POST <url>/<command>?key=…`, its headers and body), at the recorded
//! pace or as fast as possible, each new envelope printed next to the recorded one, and a
//! summary of what changed. The whole file is read and checked before anything is sent.

use super::openim::OpenImClient;
use crate::inspect::Record;
use crate::telemetry::REDACTED;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// Why a replay could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture cannot be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A line is not a callback with its request.
    #[error("{path}:{line}: {problem}")]
    Line {
        /// The file.
        path: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// `--to` is not a URL.
    #[error("--to {0}: not an http:// or https:// URL")]
    Target(String),
}

/// How the replay went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Callbacks sent.
    pub sent: usize,
    /// Answered with the recorded envelope.
    pub same: usize,
    /// Answered with another envelope.
    pub changed: usize,
    /// Not answered (unreachable, timeout, not an envelope).
    pub failed: usize,
}

/// Reads and checks a capture: every line a record with its request body, not redacted.
pub fn read(path: &std::path::Path) -> Result<Vec<Record>, ReplayError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ReplayError::Read {
        path: shown.clone(),
        error,
    })?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| ReplayError::Line {
            path: shown.clone(),
            line: i + 1,
            problem,
        };
        let record: Record =
            serde_json::from_str(raw).map_err(|e| bad(format!("not a captured callback ({e})")))?;
        match &record.request {
            None => {
                return Err(bad(format!(
                    "{} has no request body: capture with inspect.capture_bodies: true",
                    record.command
                )));
            }
            Some(body) if redacted(body) => {
                return Err(bad(format!(
                    "{}'s request body was redacted: capture with log.redact: false",
                    record.command
                )));
            }
            Some(_) => {}
        }
        out.push(record);
    }
    Ok(out)
}

fn redacted(v: &Value) -> bool {
    match v {
        Value::String(s) => s == REDACTED,
        Value::Array(items) => items.iter().any(redacted),
        Value::Object(map) => map.values().any(redacted),
        _ => false,
    }
}

/// Sends `records` to `to` (the gateway's base URL, as OpenIM's `url`), printing each answer
/// beside the recorded one; `fast`: no pauses, else the recorded gaps (at most 10 s each).
pub async fn run(
    records: &[Record],
    to: &str,
    fast: bool,
    out: &mut (dyn Write + Send),
) -> Result<Summary, ReplayError> {
    let base = to.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ReplayError::Target(to.to_owned()));
    }
    let client = OpenImClient::default();
    let mut summary = Summary::default();
    for (i, record) in records.iter().enumerate() {
        if !fast && i > 0 && record.gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(record.gap_ms.min(10_000))).await;
        }
        let mut url = format!("{base}/{}", record.command);
        if let Some(key) = &record.key {
            url.push_str("?key=");
            url.push_str(&form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>());
        }
        let body =
            serde_json::to_vec(record.request.as_ref().unwrap_or(&Value::Null)).unwrap_or_default();
        let answer = client
            .post(&url, &body, &record.operation_id, Duration::from_secs(15))
            .await;
        summary.sent += 1;
        let now = match answer {
            Ok(a) => serde_json::from_slice::<Value>(&a.body)
                .map_err(|_| format!("HTTP {}: not an envelope", a.status.as_u16())),
            Err(e) => Err(e),
        };
        let line = match now {
            Ok(env) if env == record.envelope => {
                summary.same += 1;
                format!("same     {} {}", record.command, compact(&env))
            }
            Ok(env) => {
                summary.changed += 1;
                format!(
                    "CHANGED  {}\n    was: {}\n    now: {}",
                    record.command,
                    compact(&record.envelope),
                    compact(&env)
                )
            }
            Err(e) => {
                summary.failed += 1;
                format!("FAILED   {}: {e}", record.command)
            }
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "replayed {}: {} same, {} changed, {} failed",
        summary.sent, summary.same, summary.changed, summary.failed
    );
    Ok(summary)
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// `replay`: a capture sent again; exit 0 when every envelope is as recorded, 1 when some
/// changed or failed, 2 when the capture cannot be used.
pub async fn command(file: &std::path::Path, to: &str, fast: bool) -> std::process::ExitCode {
    use std::process::ExitCode;
    let records = match read(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openim-callback-gateway replay: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout();
    match run(&records, to, fast, &mut out).await {
        Ok(s) if s.changed == 0 && s.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("openim-callback-gateway replay: {e}");
            ExitCode::from(2)
        }
    }
}
