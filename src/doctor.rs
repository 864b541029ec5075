//! `openim-callback-gateway doctor`: OpenIM's webhook configuration read beside the gateway's
//! own, and every reason found why a callback would not arrive, or not be answered as meant.
//!
//! OpenIM's side comes from its `config/webhooks.yml` ([`OpenImWebhooks::read_yml`]) and/or the
//! `IMENV_WEBHOOKS_*` variables of a Docker deployment ([`OpenImWebhooks::apply_env_file`],
//! which win over the file as OpenIM's viper does). [`diagnose`] holds them against the
//! gateway's config and the catalogue and returns [`Finding`]s, each with what to change;
//! [`probe`] sends one harmless request through OpenIM's `url`, as OpenIM would, and says whether
//! it reached this gateway. The binary prints the findings and exits 0 (fine), 1 (warnings) or
//! 2 (errors).
//!
//! What OpenIM does with each key is read from its source (main, v3.8): `failedContinue` is
//! parsed and never used since v3.7 (OpenIM issue #3808); `attentionIds` compares the message's
//! `recvID`, so on `afterSendGroupMsg` (whose `recvID` is empty) it silences every callback
//! (#3410); the HTTP client gives up after min(`timeout`, 15 s); the URL is `url + "/" +
//! command`, so a query string in `url` swallows the command.

use crate::catalog::{Catalog, Phase};
use crate::config::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The path segment of the probe request: not an OpenIM command, so no service is called; the
/// gateway answers it before routing (after the inbound checks, which it proves).
pub const PROBE_COMMAND: &str = "openimCallbackGatewayProbe";

/// The header the gateway sets on its answer to [`PROBE_COMMAND`].
pub const PROBE_HEADER: &str = "x-openim-callback-gateway";

/// Keys OpenIM parses that belong to no command (nothing sends them).
const UNUSED_KEYS: [&str; 1] = ["afterGroupMsgRevoke"];

/// OpenIM's HTTP client gives up after this, whatever `timeout` says.
const OPENIM_CLIENT_TIMEOUT: u64 = 15;

/// The fields of one command's entry OpenIM reads (`BeforeConfig` / `AfterConfig`).
const ENTRY_FIELDS: [&str; 5] = [
    "enable",
    "timeout",
    "failedContinue",
    "attentionIds",
    "deniedTypes",
];

/// A file of OpenIM's configuration that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The file cannot be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path}{}: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: String,
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
}

/// One command's entry of OpenIM's webhook configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// `enable`.
    pub enable: bool,
    /// `timeout` in seconds (OpenIM's default: 5).
    pub timeout: i64,
    /// `failedContinue`, when given (true or false).
    pub failed_continue: Option<bool>,
    /// `attentionIds`.
    pub attention_ids: Vec<String>,
    /// `deniedTypes`.
    pub denied_types: Vec<i64>,
}

/// OpenIM's webhook configuration: the `url` and an entry per `webhooks.yml` key.
#[derive(Debug, Clone, Default)]
pub struct OpenImWebhooks {
    /// `url`.
    pub url: Option<String>,
    /// The entries by `webhooks.yml` key (`beforeCreateGroup`, …).
    pub entries: BTreeMap<String, Entry>,
    /// Keys that OpenIM does not know (typos), with where they were found.
    pub unknown: Vec<String>,
    /// Where it was read from, for the report.
    pub sources: Vec<String>,
}

impl OpenImWebhooks {
    /// OpenIM's defaults: every key present, disabled, timeout 5, no `url`.
    pub fn defaults(catalog: &Catalog) -> Self {
        let entries = catalog
            .entries()
            .map(|e| e.row.key)
            .chain(UNUSED_KEYS)
            .map(|key| {
                (
                    key.to_owned(),
                    Entry {
                        timeout: 5,
                        ..Entry::default()
                    },
                )
            })
            .collect();
        Self {
            entries,
            ..Self::default()
        }
    }

    /// Reads a `webhooks.yml` over OpenIM's defaults.
    pub fn read_yml(path: &Path, catalog: &Catalog) -> Result<Self, DoctorError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DoctorError::Read {
            path: shown.clone(),
            error,
        })?;
        let invalid = |line: Option<usize>, problem: String| DoctorError::Invalid {
            path: shown.clone(),
            line,
            problem,
        };
        let value: Value = figment::Figment::from(
            <figment::providers::Yaml as figment::providers::Format>::string(&text),
        )
        .extract()
        .map_err(|e| invalid(None, format!("not OpenIM's webhooks.yml: {e}")))?;
        let Value::Object(map) = value else {
            return Err(invalid(None, "not a YAML mapping of webhook keys".into()));
        };
        let mut out = Self::defaults(catalog);
        out.sources.push(shown.clone());
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(&format!("{key}:")))
                .map(|i| i + 1)
        };
        for (key, value) in map {
            if key == "url" {
                out.url = match value {
                    Value::String(s) => Some(s),
                    Value::Null => None,
                    other => {
                        return Err(invalid(
                            line_of("url"),
                            format!("url: {other} is not a URL"),
                        ));
                    }
                };
                continue;
            }
            let Some(entry) = out.entries.get_mut(&key) else {
                out.unknown.push(key);
                continue;
            };
            let Value::Object(fields) = value else {
                return Err(invalid(
                    line_of(&key),
                    format!("{key}: expected a mapping such as {{enable: true, timeout: 5}}"),
                ));
            };
            for (field, value) in fields {
                set_field(entry, &field, &value).map_err(|problem| {
                    invalid(line_of(&key), format!("{key}.{field}: {problem}"))
                })?;
            }
        }
        Ok(out)
    }

    /// Applies the `IMENV_WEBHOOKS_*` lines of an env file (`KEY=VALUE`, also `- KEY=VALUE` as
    /// in a compose file's `environment:` list, or `export KEY=VALUE`); other variables are
    /// skipped. They win over `webhooks.yml`, as in OpenIM.
    pub fn apply_env_file(&mut self, path: &Path) -> Result<(), DoctorError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DoctorError::Read {
            path: shown.clone(),
            error,
        })?;
        self.sources.push(shown.clone());
        // Upper-cased key → the webhooks.yml key.
        let keys: BTreeMap<String, String> = self
            .entries
            .keys()
            .map(|k| (k.to_uppercase(), k.clone()))
            .collect();
        for (i, raw) in text.lines().enumerate() {
            let invalid = |problem: String| DoctorError::Invalid {
                path: shown.clone(),
                line: Some(i + 1),
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("- ").unwrap_or(line).trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim();
            let Some((name, value)) = line.split_once('=') else {
                return Err(invalid(format!(
                    "`{}` is not a VARIABLE=value line",
                    raw.trim()
                )));
            };
            let name = name.trim().trim_matches(['"', '\'']);
            let value = value.trim().trim_matches(['"', '\'']);
            let Some(rest) = name.strip_prefix("IMENV_WEBHOOKS_") else {
                continue;
            };
            if rest == "URL" {
                self.url = Some(value.to_owned());
                continue;
            }
            let found = ENTRY_FIELDS.iter().find_map(|field| {
                let upper = field.to_uppercase();
                let key = rest.strip_suffix(&format!("_{upper}"))?;
                Some((keys.get(key)?, *field))
            });
            let Some((key, field)) = found else {
                self.unknown.push(name.to_owned());
                continue;
            };
            let value = env_value(field, value);
            if let Some(entry) = self.entries.get_mut(key) {
                set_field(entry, field, &value)
                    .map_err(|problem| invalid(format!("{name}: {problem}")))?;
            }
        }
        Ok(())
    }
}

/// An env variable's text as the YAML value it stands for.
fn env_value(field: &str, text: &str) -> Value {
    match field {
        "attentionIds" | "deniedTypes" => Value::Array(
            text.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<i64>()
                        .map_or_else(|_| Value::String(s.to_owned()), Value::from)
                })
                .collect(),
        ),
        _ => match text {
            "" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            t => t
                .parse::<i64>()
                .map_or_else(|_| Value::String(t.to_owned()), Value::from),
        },
    }
}

fn set_field(entry: &mut Entry, field: &str, value: &Value) -> Result<(), String> {
    let as_bool = |v: &Value| match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        other => Err(format!("expected true or false, found {other}")),
    };
    match field {
        "enable" => entry.enable = as_bool(value)?,
        "failedContinue" => {
            entry.failed_continue = match value {
                Value::Null => None,
                v => Some(as_bool(v)?),
            }
        }
        "timeout" => {
            entry.timeout = match value {
                Value::Null => 0,
                Value::Number(n) => n
                    .as_i64()
                    .ok_or_else(|| format!("expected whole seconds such as 5, found {n}"))?,
                other => return Err(format!("expected whole seconds such as 5, found {other}")),
            }
        }
        "attentionIds" => {
            entry.attention_ids = list(value)?
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect()
        }
        "deniedTypes" => {
            entry.denied_types = list(value)?
                .into_iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| format!("expected content types such as 101, found {v}"))
                })
                .collect::<Result<_, _>>()?
        }
        // A field OpenIM does not read (e.g. `allowedTypes`, gone since 2025): harmless.
        _ => {}
    }
    Ok(())
}

fn list(value: &Value) -> Result<Vec<Value>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => Ok(items.clone()),
        other => Err(format!("expected a list such as [a, b], found {other}")),
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Callbacks will not arrive or not be answered as meant.
    Error,
    /// Probably not what was meant; costs or surprises.
    Warning,
    /// Good to know.
    Info,
}

impl Severity {
    /// As printed.
    pub fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// One problem found, with what to change.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// A stable name of the check (`url-query`, `failed-continue`, …), for scripts and docs.
    pub check: &'static str,
    /// What it is about (a key, a command).
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// What to change.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{}] {}: {}\n    fix: {}",
            self.severity.label(),
            self.check,
            self.subject,
            self.problem,
            self.fix
        )
    }
}

/// The exit code of a report: 0 nothing worse than info, 1 warnings, 2 errors.
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.severity).min() {
        Some(Severity::Error) => 2,
        Some(Severity::Warning) => 1,
        _ => 0,
    }
}

/// Holds OpenIM's configuration against the gateway's: every finding, worst first.
pub fn diagnose(openim: &OpenImWebhooks, config: &Config, catalog: &Catalog) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut find = |severity, check, subject: &str, problem: String, fix: String| {
        out.push(Finding {
            severity,
            check,
            subject: subject.to_owned(),
            problem,
            fix,
        })
    };
    check_url(openim.url.as_deref(), config, &mut find);
    for key in &openim.unknown {
        let near = openim
            .entries
            .keys()
            .min_by_key(|k| edit_distance(&k.to_lowercase(), &key.to_lowercase()))
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        find(
            Severity::Warning,
            "unknown-key",
            key,
            format!("OpenIM does not know this key{near}, so it changes nothing"),
            "spell it as in OpenIM's webhooks.yml (the table in docs/commands.md)".into(),
        );
    }
    let budget = config.openim_timeout.0;
    for entry in catalog.entries() {
        let key = entry.row.key;
        let command = entry.row.command;
        let Some(oi) = openim.entries.get(key) else {
            continue;
        };
        let settings = config.settings(command).unwrap_or_default();
        let configured = config.commands.contains_key(command);
        if !oi.enable {
            if configured && settings.enabled {
                find(
                    Severity::Warning,
                    "disabled-in-openim",
                    key,
                    format!(
                        "the gateway routes {command} (commands.{command}), but OpenIM never sends it: enable is false"
                    ),
                    format!(
                        "set `{key}: {{enable: true}}` in webhooks.yml (IMENV_WEBHOOKS_{}_ENABLE=true) and restart OpenIM",
                        key.to_uppercase()
                    ),
                );
            }
            continue;
        }
        if !settings.enabled {
            find(
                Severity::Warning,
                "disabled-in-gateway",
                key,
                format!(
                    "OpenIM sends {command}, but the gateway answers it `continue` without calling a service (commands.{command}.enabled: false)"
                ),
                format!(
                    "disable `{key}` in OpenIM (one HTTP call less per event), or enable the command in the gateway"
                ),
            );
        }
        let effective = if oi.timeout <= 0 || oi.timeout as u64 > OPENIM_CLIENT_TIMEOUT {
            OPENIM_CLIENT_TIMEOUT
        } else {
            oi.timeout as u64
        };
        if oi.timeout as u64 > OPENIM_CLIENT_TIMEOUT || oi.timeout <= 0 {
            find(
                Severity::Info,
                "timeout-capped",
                key,
                format!(
                    "timeout {} means {OPENIM_CLIENT_TIMEOUT}s: OpenIM's HTTP client gives up after {OPENIM_CLIENT_TIMEOUT}s",
                    oi.timeout
                ),
                format!("set `timeout` to at most {OPENIM_CLIENT_TIMEOUT}"),
            );
        }
        let openim_wait = Duration::from_secs(effective);
        let gateway_wait = budget.min(settings.timeout.0);
        if entry.phase == Phase::Before && settings.enabled && openim_wait < budget {
            find(
                Severity::Error,
                "timeout-shorter-than-gateway",
                key,
                format!(
                    "OpenIM gives up after {}s, but the gateway's budget is openim_timeout {} (the service may take {}): OpenIM fails the user's operation (90004) before the gateway's failure policy answers",
                    effective,
                    humantime::format_duration(budget),
                    humantime::format_duration(gateway_wait),
                ),
                format!(
                    "set the gateway's `openim_timeout` to {effective}s or less, or raise `{key}.timeout` in OpenIM"
                ),
            );
        }
        if entry.phase == Phase::Before
            && effective > budget.as_secs().max(1) + 5
            && openim_wait >= budget
        {
            find(
                Severity::Info,
                "timeout-longer-than-needed",
                key,
                format!(
                    "OpenIM waits up to {effective}s, and the user's operation waits with it; the gateway always answers within {}",
                    humantime::format_duration(budget)
                ),
                format!("set `{key}.timeout` to {}", budget.as_secs().max(1)),
            );
        }
        if let Some(true) = oi.failed_continue {
            let policy = match settings.on_failure {
                crate::config::FailurePolicy::Continue => "continue",
                crate::config::FailurePolicy::Reject => "reject",
            };
            find(
                Severity::Warning,
                "failed-continue",
                key,
                "failedContinue has been ignored by OpenIM since v3.7 (issue #3808): a failing webhook fails the user's operation".into(),
                format!("remove it; the gateway answers every failure by the command's `on_failure` (here: {policy}), so OpenIM never sees the failure"),
            );
        }
        if !oi.attention_ids.is_empty() {
            let (severity, problem) = if key == "afterSendGroupMsg" {
                (
                    Severity::Error,
                    "attentionIds is compared with the message's recvID, which is empty for group messages: OpenIM never sends afterSendGroupMsg (issue #3410)".to_owned(),
                )
            } else {
                (
                    Severity::Warning,
                    format!(
                        "attentionIds makes OpenIM send {command} only for messages whose recvID is one of the {} listed IDs (not by sender, never for groups)",
                        oi.attention_ids.len()
                    ),
                )
            };
            find(
                severity,
                "attention-ids",
                key,
                problem,
                "remove attentionIds and filter in the service (by recvID, sendID or groupID), where a mistake is visible".into(),
            );
        }
    }
    let enabled = |k: &str| openim.entries.get(k).is_some_and(|e| e.enable);
    if enabled("beforeOnlinePush") && !enabled("beforeGroupOnlinePush") {
        find(
            Severity::Warning,
            "group-push",
            "beforeGroupOnlinePush",
            "beforeOnlinePush is enabled but beforeGroupOnlinePush is not: group messages use beforeGroupOnlinePush, so they are pushed without the hook".into(),
            "enable beforeGroupOnlinePush too".into(),
        );
    }
    for key in ["afterUserOnline", "afterUserOffline"] {
        if enabled(key) {
            find(
                Severity::Warning,
                "online-flood",
                key,
                "OpenIM re-sends the online status of every connected user every few minutes (renewal ticks), a steady flood of after-events".into(),
                format!("keep `{key}` only if a service needs it; the gateway spools them, but each costs a call"),
            );
        }
    }
    if enabled("afterGroupMsgRevoke") {
        find(
            Severity::Info,
            "never-sent",
            "afterGroupMsgRevoke",
            "OpenIM parses this key but no code sends it; revokes arrive as afterRevokeMsg (callbackBeforeAfterMsgCommand)".into(),
            "enable afterRevokeMsg instead".into(),
        );
    }
    if enabled("afterUserKickOff") {
        find(
            Severity::Info,
            "never-sent",
            "afterUserKickOff",
            "OpenIM defines callbackAfterUserKickOffCommand but never sends it".into(),
            "nothing arrives for it; remove it to avoid surprises".into(),
        );
    }
    if openim.entries.values().all(|e| !e.enable) {
        find(
            Severity::Error,
            "nothing-enabled",
            "webhooks",
            "every callback is disabled in OpenIM: nothing will arrive".into(),
            "set `enable: true` for the callbacks you want (e.g. `beforeCreateGroup: {enable: true, timeout: 5}`) and restart OpenIM".into(),
        );
    }
    out.sort_by_key(|f| f.severity);
    out
}

fn check_url(
    url: Option<&str>,
    config: &Config,
    find: &mut impl FnMut(Severity, &'static str, &str, String, String),
) {
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        find(
            Severity::Error,
            "url-missing",
            "url",
            "OpenIM has no webhook url: it calls nothing".into(),
            "set `url: http://<gateway host>:10006/callbackExample` (IMENV_WEBHOOKS_URL in Docker)"
                .into(),
        );
        return;
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        find(
            Severity::Error,
            "url-scheme",
            "url",
            format!(
                "`{url}` has no scheme: OpenIM's Go client refuses it (unsupported protocol scheme)"
            ),
            format!("write it as http://{url}"),
        );
        return;
    };
    if scheme != "http" && scheme != "https" {
        find(
            Severity::Error,
            "url-scheme",
            "url",
            format!("`{scheme}://` is not http or https"),
            "use http:// (or https:// with the gateway's TLS)".into(),
        );
    }
    if let Some((before, query)) = rest.split_once('?') {
        find(
            Severity::Error,
            "url-query",
            "url",
            format!("the query string `?{query}` comes before the command: OpenIM posts to `{scheme}://{before}?{query}/<command>`, so the command is lost in the query"),
            "move the secret into the path (the gateway's `auth.path_secrets`), e.g. http://gateway:10006/<secret>".into(),
        );
        return;
    }
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    if path.ends_with('/') {
        find(
            Severity::Info,
            "url-trailing-slash",
            "url",
            "the url ends with `/`: OpenIM posts to `…//<command>` (the gateway routes it all the same)"
                .into(),
            "drop the trailing slash".into(),
        );
    }
    let secrets = config.auth.all_path_secrets().unwrap_or_default();
    if !secrets.is_empty() {
        let first = path.split('/').find(|s| !s.is_empty()).unwrap_or("");
        if !secrets.iter().any(|s| s.expose() == first) {
            find(
                Severity::Error,
                "url-path-secret",
                "url",
                "the gateway requires a path secret as the first path segment (auth.path_secrets), and the url's first segment is not one of them: every callback is refused".into(),
                "set url to http://<gateway>:10006/<one of auth.path_secrets>".into(),
            );
        }
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Sends one request through `url` as OpenIM would (`POST <url>/<PROBE_COMMAND>`, Go's headers,
/// a JSON body, no service called) and says whether it reached this gateway.
pub async fn probe(url: &str, timeout: Duration) -> Finding {
    let target = format!("{}/{PROBE_COMMAND}", url.trim_end());
    let finding = |severity, problem: String, fix: &str| Finding {
        severity,
        check: "probe",
        subject: target.clone(),
        problem,
        fix: fix.to_owned(),
    };
    let body = format!("{{\"callbackCommand\":\"{PROBE_COMMAND}\"}}");
    let response = match crate::cli::openim::OpenImClient::default()
        .post(
            &target,
            body.as_bytes(),
            "openim-callback-gateway-doctor",
            timeout,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return finding(
                Severity::Error,
                e,
                "check the host and port, and that the gateway listens on an address OpenIM can reach (--listen 0.0.0.0:10006)",
            );
        }
    };
    let status = response.status;
    let ours = response.headers.contains_key(PROBE_HEADER);
    match (status.as_u16(), ours) {
        (200, true) => finding(
            Severity::Info,
            "reached this gateway, and passed its inbound checks".into(),
            "nothing to do",
        ),
        (401 | 403, _) => finding(
            Severity::Error,
            format!(
                "refused with HTTP {status}: the gateway's inbound checks (path secret, header, allowed sources, mTLS) turn OpenIM away"
            ),
            "make OpenIM's url carry the path secret, or allow its address in auth.allow_sources",
        ),
        (_, false) => finding(
            Severity::Error,
            format!("HTTP {status} from something that is not this gateway (or an older one)"),
            "point OpenIM's url at the gateway's callback port",
        ),
        _ => finding(
            Severity::Warning,
            format!("HTTP {status} from the gateway"),
            "read the gateway's log for this request",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_distance_counts_single_changes() {
        assert_eq!(edit_distance("timeout", "timout"), 1);
        assert_eq!(edit_distance("enable", "enable"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn env_values_become_the_yaml_values_they_stand_for() {
        assert_eq!(env_value("enable", "true"), Value::Bool(true));
        assert_eq!(env_value("timeout", "7"), Value::from(7));
        assert_eq!(env_value("failedContinue", ""), Value::Null);
        assert_eq!(
            env_value("attentionIds", "u1,u2"),
            serde_json::json!(["u1", "u2"])
        );
    }
}
