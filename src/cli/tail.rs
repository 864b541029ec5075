//! `openim-callback-gateway tail`: the callbacks a running gateway answers, one line each as they
//! arrive (`GET /admin/callbacks/stream`), like `kubectl logs -f`; `--jsonl` writes the records
//! as they come, a capture for `replay`.

use super::admin::{AdminClient, AdminError};
use crate::inspect::Record;
use std::io::Write;

/// One record as a line: time, outcome, command, latency, route, gRPC status, operationID, and
/// the envelope's errCode when it rejects.
pub fn line(r: &Record) -> String {
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let mut out = format!(
        "{time} {:<13} {:<52} {:>8.2}ms  {}",
        r.outcome, r.command, r.latency_ms, r.route
    );
    if let Some(status) = &r.grpc_status {
        out.push_str(&format!(" grpc={status}"));
    }
    if !r.operation_id.is_empty() {
        out.push_str(&format!(" op={}", r.operation_id));
    }
    if r.envelope["nextCode"] == 1 {
        out.push_str(&format!(" errCode={}", r.envelope["errCode"]));
    }
    out
}

/// Follows the stream until it ends (the gateway stopped) or writing fails (a closed pipe).
pub async fn run(
    admin: &AdminClient,
    command: Option<&str>,
    jsonl: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), AdminError> {
    use http_body_util::BodyExt as _;
    let mut body = admin
        .stream("/admin/callbacks/stream", &[("command", command)])
        .await?;
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        // Server-sent events: blocks separated by a blank line; `data:` lines carry the JSON.
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let printed = if block.lines().any(|l| l == "event: lagged") {
                writeln!(
                    out,
                    "… {data} callbacks not shown (the terminal was too slow)"
                )
            } else {
                match serde_json::from_str::<Record>(&data) {
                    Ok(r) if jsonl => writeln!(out, "{data}").map(|()| drop(r)),
                    Ok(r) => writeln!(out, "{}", line(&r)),
                    Err(_) => continue,
                }
            };
            if printed.and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `tail`: the live callbacks of a running gateway.
pub async fn command(
    admin: &str,
    token_file: Option<&std::path::Path>,
    command: Option<&str>,
    jsonl: bool,
) -> std::process::ExitCode {
    let token = match super::output::admin_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = match AdminClient::parse(admin, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout();
    match run(&client, command, jsonl, &mut out).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
