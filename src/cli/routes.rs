//! `openim-callback-gateway routes`: this module owns printing the effective route table
//! (command → upstream, RPC, timeout, policy, delivery, rules), from the file's configuration or
//! from a running gateway's (`--admin`).

use std::path::Path;
use std::process::ExitCode;

use super::CliError;
use super::output::{admin_token, print_lines, stdout_failed};
use crate::config::Config;

/// `routes`: the table of `config`, or with `admin` that of the running gateway there; one JSON
/// object per line with `json`.
pub async fn run(
    config: &Config,
    json: bool,
    admin: Option<&str>,
    token_file: Option<&Path>,
) -> ExitCode {
    match admin {
        None => table(config, json),
        Some(admin) => match live_config(admin, token_file).await {
            Ok(live) => table(&live, json),
            Err(e) => {
                eprintln!("openim-callback-gateway routes: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The running configuration of a gateway, from its `GET /admin/config`.
async fn live_config(admin: &str, token_file: Option<&Path>) -> Result<Config, CliError> {
    use super::admin::AdminClient;
    let token = admin_token(token_file)?;
    let client = AdminClient::parse(admin, token)?;
    let answer: serde_json::Value = client.call("GET", "/admin/config", &[]).await?;
    serde_json::from_value(answer["config"].clone())
        .map_err(|e| CliError::Answer(format!("{admin}/admin/config: not a configuration: {e}")))
}

/// `routes`: the table every callback is routed by, from the same code the gateway uses.
fn table(config: &Config, json: bool) -> ExitCode {
    use crate::catalog::{Catalog, Phase};
    use crate::config::Delivery;
    let catalog = match Catalog::contract() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = Vec::new();
    for entry in catalog.entries() {
        let s = match config.settings(entry.row.command) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("openim-callback-gateway: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        };
        let endpoints = config
            .upstreams
            .get(&s.upstream)
            .map(|u| u.endpoints.join(","))
            .unwrap_or_else(|| "(built-in demo)".into());
        let delivery = match (entry.phase, s.delivery) {
            (Phase::Before, _) => "sync (before)",
            (Phase::After, Delivery::Sync) => "sync",
            (Phase::After, Delivery::Spool) if s.ordered => "spool, ordered",
            (Phase::After, Delivery::Spool) => "spool",
        };
        let policy = match s.on_failure {
            crate::config::FailurePolicy::Continue => "continue".to_owned(),
            crate::config::FailurePolicy::Reject => {
                format!("reject {}", s.reject_code)
            }
        };
        let gate = crate::gate::Gate::build(
            &s,
            &config.bots,
            crate::fields::FieldNumbers::of(&entry.request()),
        );
        let mut rules = gate.names().join(",");
        if s.shadow && entry.phase == Phase::Before {
            rules.push_str(if rules.is_empty() {
                "shadow"
            } else {
                ",shadow"
            });
        }
        if rules.is_empty() {
            rules.push('-');
        }
        rows.push(serde_json::json!({
            "command": entry.row.command,
            "rules": rules,
            "enabled": s.enabled,
            "upstream": s.upstream,
            "endpoints": endpoints,
            "rpc": entry.path.as_str(),
            "timeout": humantime::format_duration(s.timeout.0).to_string(),
            "on_failure": policy,
            "delivery": delivery,
        }));
    }
    if json {
        return match print_lines(rows.iter().map(ToString::to_string)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
        };
    }
    let cols = [
        "command",
        "enabled",
        "upstream",
        "rpc",
        "timeout",
        "on_failure",
        "delivery",
        "rules",
        "endpoints",
    ];
    let cell = |row: &serde_json::Value, c: &str| match &row[c] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.trim_end().to_owned()
    };
    let header = line(cols.iter().map(|c| c.to_uppercase()).collect());
    let body = rows
        .iter()
        .map(|row| line(cols.iter().map(|c| cell(row, c)).collect()));
    match print_lines(std::iter::once(header).chain(body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
    }
}
