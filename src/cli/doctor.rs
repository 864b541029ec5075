//! `openim-callback-gateway doctor`: this module owns the command's input (OpenIM's
//! `webhooks.yml`, its `IMENV_WEBHOOKS_*` lines, `--probe`) and output; the checks themselves
//! are `crate::doctor`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use super::output::{print_lines, stdout_failed};
use crate::config::Config;

/// `doctor`: OpenIM's webhook configuration against this gateway's; the findings on stdout.
pub async fn run(
    config: &Config,
    openim: Option<PathBuf>,
    openim_env: Option<PathBuf>,
    probe: Option<String>,
) -> ExitCode {
    use crate::doctor::{self, OpenImWebhooks};
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("openim-callback-gateway doctor: {e}");
        ExitCode::from(2)
    };
    let catalog = match crate::catalog::Catalog::contract() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if openim.is_none() && openim_env.is_none() && probe.as_deref().is_none_or(str::is_empty) {
        return fail(
            &"give OpenIM's configuration: --openim config/webhooks.yml and/or --openim-env FILE (the IMENV_WEBHOOKS_* lines), or --probe URL",
        );
    }
    let mut webhooks = match &openim {
        Some(path) => match OpenImWebhooks::read_yml(path, catalog) {
            Ok(w) => w,
            Err(e) => return fail(&e),
        },
        None => OpenImWebhooks::defaults(catalog),
    };
    if let Some(path) = &openim_env
        && let Err(e) = webhooks.apply_env_file(path)
    {
        return fail(&e);
    }
    let mut findings = if openim.is_some() || openim_env.is_some() {
        doctor::diagnose(&webhooks, config, catalog)
    } else {
        Vec::new()
    };
    let probe_url = match probe.as_deref() {
        Some("") => webhooks.url.clone(),
        other => other.map(str::to_owned),
    };
    match (probe.is_some(), probe_url) {
        (true, Some(url)) => {
            findings.push(doctor::probe(&url, std::time::Duration::from_secs(5)).await)
        }
        (true, None) => return fail(&"--probe needs a URL: OpenIM's url was not read"),
        _ => {}
    }
    let code = doctor::exit_code(&findings);
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let mut lines = Vec::new();
    if !webhooks.sources.is_empty() {
        lines.push(format!(
            "OpenIM's webhooks from {}",
            webhooks.sources.join(" + ")
        ));
    }
    lines.extend(findings.iter().map(ToString::to_string));
    lines.push(format!(
        "{} error(s), {} warning(s), {} note(s)",
        count(doctor::Severity::Error),
        count(doctor::Severity::Warning),
        count(doctor::Severity::Info)
    ));
    if let Err(e) = print_lines(lines) {
        return stdout_failed(&e, ExitCode::from(code));
    }
    ExitCode::from(code)
}
