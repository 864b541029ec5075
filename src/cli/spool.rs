//! The `spool` operator commands: this module owns count, list, replay and purge, on the spool
//! (the redb file, or Redis) or, with `--admin URL`, through the admin API of a running gateway
//! (which holds a redb file's lock).

use std::io::Write;

use super::CliError;
use super::admin::AdminClient;
use crate::config::SpoolConfig;
use crate::spool::admin::{CountView, EventView};
use crate::spool::{Progress, Select, Spool, SpoolStats, Which, utc};

/// Events per step of a replay or purge, and so per progress line.
pub const PROGRESS_EVERY: usize = 10_000;

/// Operator commands on the spool.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum SpoolCommand {
    /// Count pending events and dead letters.
    Count,
    /// List pending events (or dead letters), oldest first.
    List {
        /// List dead letters instead of pending events.
        #[arg(long)]
        dead: bool,
        /// Show at most this many events.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to pending, attempts reset; the gateway delivers them again
    /// with their original delivery ids.
    Replay {
        /// Only dead letters of this callback command.
        #[arg(long)]
        command: Option<String>,
        /// Only the dead letter with this id (the first column of `spool list --dead`).
        #[arg(long)]
        id: Option<u64>,
        /// Only dead letters first stored at or after this time: RFC 3339
        /// (`2026-05-01T12:00:00Z`) or a duration ago (`2h`).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Only dead letters first stored before this time: RFC 3339 or a duration ago.
        #[arg(long, value_parser = parse_time)]
        until: Option<u64>,
    },
    /// Delete events for good. Without --yes only shows how many would go.
    Purge {
        /// Delete dead letters.
        #[arg(long)]
        dead: bool,
        /// Delete pending (undelivered) events.
        #[arg(long)]
        pending: bool,
        /// Only events of this callback command.
        #[arg(long)]
        command: Option<String>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

/// `spool …` as the binary runs it: the token file read, the command run, its exit code (a closed
/// pipe, as `spool list | head` leaves, is success).
pub async fn command(
    cmd: SpoolCommand,
    settings: &SpoolConfig,
    admin: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let token = match super::output::admin_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openim-callback-gateway spool: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cmd, settings, admin, token).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`spool list | head`): nothing left to say.
        Err(e) if super::output::broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openim-callback-gateway spool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command, printing to stdout. With `admin` (a base URL such as
/// `http://127.0.0.1:10006`) it calls the running gateway; otherwise it opens the spool file,
/// which fails with `SpoolError::AlreadyOpen` (naming `--admin`) while the gateway runs.
///
/// `token` is the admin API's bearer token (`--token-file`), sent with every `--admin` call.
pub async fn run(
    cmd: SpoolCommand,
    settings: &SpoolConfig,
    admin: Option<&str>,
    token: Option<String>,
) -> Result<(), CliError> {
    let mut out = std::io::stdout();
    run_to(cmd, settings, admin, token, &mut out, PROGRESS_EVERY).await
}

/// [`run`], writing to `out`, with a progress line every `progress_every` events.
pub(crate) async fn run_to<W: Write + Send>(
    cmd: SpoolCommand,
    settings: &SpoolConfig,
    admin: Option<&str>,
    token: Option<String>,
    out: &mut W,
    progress_every: usize,
) -> Result<(), CliError> {
    let backend = match admin {
        Some(url) => Backend::Admin(Box::new(AdminClient::parse(url, token)?)),
        None => Backend::Local(Spool::open_for_operator(settings)?),
    };
    let result = execute(&backend, cmd, out, progress_every.max(1)).await;
    if let Backend::Local(spool) = &backend {
        spool.shutdown().await;
    }
    result
}

async fn execute<W: Write + Send>(
    backend: &Backend,
    cmd: SpoolCommand,
    out: &mut W,
    step: usize,
) -> Result<(), CliError> {
    match cmd {
        SpoolCommand::Count => {
            let s = backend.stats().await?;
            writeln!(out, "pending: {}", s.pending)?;
            writeln!(out, "dead: {}", s.dead)?;
            writeln!(out, "bytes: {}", s.bytes)?;
            if matches!(backend, Backend::Admin(_)) {
                writeln!(out, "in_flight: {}", s.in_flight)?;
                // That replica's local buffer (Redis backend; 0 with redb).
                if s.buffered > 0 {
                    writeln!(out, "buffered (local to that replica): {}", s.buffered)?;
                }
                if s.stale {
                    writeln!(
                        out,
                        "(redis does not answer: pending, dead and bytes are the last read)"
                    )?;
                }
            }
        }
        SpoolCommand::List { dead, limit, json } => {
            let which = if dead { Which::Dead } else { Which::Pending };
            let events = backend.list(which, limit).await?;
            if events.is_empty() && !json {
                writeln!(out, "no {which} events")?;
            }
            for e in &events {
                if json {
                    let line = serde_json::to_string(e)
                        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", human(e))?;
                }
            }
            if !json {
                let s = backend.stats().await?;
                let total = if dead { s.dead } else { s.pending };
                let shown = events.len() as u64;
                if total > shown {
                    writeln!(out, "(the first {shown} of {total}; see --limit)")?;
                }
            }
        }
        SpoolCommand::Replay {
            command,
            id,
            since,
            until,
        } => {
            let select = Select {
                command,
                id,
                since_ms: since,
                until_ms: until,
            };
            let filter = select.describe();
            let mut total = 0;
            let mut after = None;
            // Each step moves past at least one id, so the loop ends.
            loop {
                let chunk = backend.replay_chunk(&select, after, step).await?;
                total += chunk.count;
                match chunk.next_after {
                    Some(next) => {
                        after = Some(next);
                        writeln!(out, "replayed {total} dead letters so far…")?;
                    }
                    None => break,
                }
            }
            let when = match backend {
                Backend::Local(s) => s.replayed_delivered_by(),
                Backend::Admin(_) => "the gateway is delivering them",
            };
            writeln!(
                out,
                "replayed {total} dead letters{filter} to pending; {when}"
            )?;
        }
        SpoolCommand::Purge {
            dead,
            pending,
            command,
            yes,
        } => {
            let mut targets = Vec::new();
            if pending {
                targets.push(Which::Pending);
            }
            if dead {
                targets.push(Which::Dead);
            }
            if targets.is_empty() {
                return Err(CliError::Usage(
                    "purge needs --dead, --pending or both".to_owned(),
                ));
            }
            let filter = filter_text(command.as_deref());
            for which in targets {
                if !yes {
                    let n = backend.count(which, command.as_deref()).await?;
                    writeln!(out, "would purge {n} {which} events{filter}")?;
                    continue;
                }
                let mut total = 0;
                let mut after = None;
                loop {
                    let chunk = backend
                        .purge_chunk(which, command.as_deref(), after, step)
                        .await?;
                    total += chunk.count;
                    match chunk.next_after {
                        Some(next) => {
                            after = Some(next);
                            writeln!(out, "purged {total} {which} events so far…")?;
                        }
                        None => break,
                    }
                }
                writeln!(out, "purged {total} {which} events{filter}")?;
            }
            if !yes {
                writeln!(out, "nothing was deleted; run again with --yes to delete")?;
            }
        }
    }
    Ok(())
}

/// `--since`/`--until`: RFC 3339, or a duration meaning that long ago; milliseconds since the
/// Unix epoch.
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(text).map_err(|_| {
                format!("{text:?} is neither an RFC 3339 time nor a duration such as 2h")
            })?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{text:?} reaches back before 1970"))?
        }
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?
        .as_millis();
    u64::try_from(ms).map_err(|_| format!("{text:?} is too far ahead"))
}

fn filter_text(command: Option<&str>) -> String {
    command.map(|c| format!(" of {c}")).unwrap_or_default()
}

fn human(e: &EventView) -> String {
    let mut line = format!(
        "{:>8}  {}  {}  attempts={}  first_seen={}",
        e.id,
        e.delivery_id,
        e.command,
        e.attempts,
        utc(e.first_seen_ms)
    );
    if let Some(k) = &e.order_key {
        line.push_str(&format!("  order_key={k:?}"));
    }
    if !e.operation_id.is_empty() {
        line.push_str(&format!("  operation_id={:?}", e.operation_id));
    }
    if let Some(err) = &e.last_error {
        line.push_str(&format!("  last_error={err:?}"));
    }
    // The attempt history on the same line (one line per event): `#N time code "message"`.
    for a in &e.history {
        line.push_str(&format!(
            "  #{} {} {} {:?}",
            a.number,
            utc_ms(a.at_ms),
            a.code,
            a.message
        ));
    }
    line
}

/// `2024-05-01T12:34:56.789Z` from milliseconds since the Unix epoch.
fn utc_ms(ms: u64) -> String {
    let secs = utc(ms);
    let whole = secs.trim_end_matches('Z');
    format!("{whole}.{:03}Z", ms % 1000)
}

/// Where the commands act: the file, or a running gateway.
enum Backend {
    Local(Spool),
    Admin(Box<AdminClient>),
}

impl Backend {
    async fn stats(&self) -> Result<SpoolStats, CliError> {
        match self {
            Backend::Local(s) => Ok(s.stats_now()?),
            Backend::Admin(a) => Ok(a.call("GET", "/admin/spool", &[]).await?),
        }
    }

    async fn list(&self, which: Which, limit: usize) -> Result<Vec<EventView>, CliError> {
        match self {
            Backend::Local(s) => Ok(s.list(which, limit)?.iter().map(EventView::from).collect()),
            Backend::Admin(a) => {
                let limit = limit.to_string();
                let which = which.to_string();
                Ok(a.call(
                    "GET",
                    "/admin/spool/events",
                    &[("which", Some(&which)), ("limit", Some(&limit))],
                )
                .await?)
            }
        }
    }

    async fn count(&self, which: Which, command: Option<&str>) -> Result<u64, CliError> {
        match self {
            Backend::Local(s) => Ok(s.count(which, command)?),
            Backend::Admin(a) => {
                let which = which.to_string();
                let v: CountView = a
                    .call(
                        "GET",
                        "/admin/spool/count",
                        &[("which", Some(&which)), ("command", command)],
                    )
                    .await?;
                Ok(v.count)
            }
        }
    }

    async fn replay_chunk(
        &self,
        select: &Select,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, CliError> {
        match self {
            Backend::Local(s) => Ok(s.replay_dead_chunk(select, after, max)?),
            Backend::Admin(a) => {
                let after = after.map(|a| a.to_string());
                let max = max.to_string();
                let id = select.id.map(|v| v.to_string());
                let since = select.since_ms.map(|v| v.to_string());
                let until = select.until_ms.map(|v| v.to_string());
                Ok(a.call(
                    "POST",
                    "/admin/spool/replay",
                    &[
                        ("command", select.command.as_deref()),
                        ("id", id.as_deref()),
                        ("since", since.as_deref()),
                        ("until", until.as_deref()),
                        ("after", after.as_deref()),
                        ("max", Some(&max)),
                    ],
                )
                .await?)
            }
        }
    }

    async fn purge_chunk(
        &self,
        which: Which,
        command: Option<&str>,
        after: Option<u64>,
        max: usize,
    ) -> Result<Progress, CliError> {
        match self {
            Backend::Local(s) => Ok(s.purge_chunk(which, command, after, max)?),
            Backend::Admin(a) => {
                let which = which.to_string();
                let after = after.map(|a| a.to_string());
                let max = max.to_string();
                Ok(a.call(
                    "POST",
                    "/admin/spool/purge",
                    &[
                        ("which", Some(&which)),
                        ("command", command),
                        ("after", after.as_deref()),
                        ("max", Some(&max)),
                    ],
                )
                .await?)
            }
        }
    }
}
