//! The `openim-callback-gateway` binary: flags, config, logging, then `run`.

use clap::{Parser, Subcommand};
use openim_callback_gateway::config::{Config, Flags, UpstreamConfig};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// OpenIM webhook callbacks in, typed gRPC calls out.
///
/// With no arguments it listens on 127.0.0.1:10006 and answers with the built-in demo policy
/// (the example hook service); with a config file or `--upstream` it calls your hook service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// YAML config file (see config/gateway.example.yaml). OPENIM_GATEWAY_* variables override it.
    #[arg(long, env = "OPENIM_GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:10006 (overrides `listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address of the operators' port (/healthz, /readyz, /metrics, the admin API), e.g.
    /// 127.0.0.1:10007 (overrides `admin_listen`). Keeps the admin API off the port OpenIM
    /// reaches.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
    /// gRPC URI of the default upstream every command uses unless configured otherwise
    /// (sets `upstreams.default.endpoints`; its other settings still apply), e.g.
    /// http://127.0.0.1:50051.
    #[arg(long)]
    upstream: Option<String>,
    /// Let the built-in example hook service answer as the `default` upstream (`demo: true`):
    /// its demo policy rejects "spam" and rewrites messages. For trying the gateway out.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and manage the after-event spool (pending events and dead letters).
    Spool {
        /// Talk to a running gateway's admin API at this base URL instead of opening the spool
        /// file (which a running gateway holds locked), e.g. http://127.0.0.1:10006.
        #[arg(long, global = true)]
        admin: Option<String>,
        /// With --admin: a file holding the admin API's bearer token (`admin_token_file`).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: openim_callback_gateway::spool::cli::SpoolCommand,
    },
    /// Validate the configuration against the compiled contract (every key, file and upstream
    /// URI, as a start would), print the effective settings, and exit 0 (valid) or 2 (not).
    #[command(alias = "check-config")]
    Check,
    /// Print the effective route table: command → upstream, RPC, timeout, policy, delivery.
    Routes {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// The live route table of a running gateway (its admin API, e.g.
        /// http://127.0.0.1:10007) instead of the file's.
        #[arg(long)]
        admin: Option<String>,
        /// With --admin: a file holding the admin API's bearer token (`admin_token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Read OpenIM's webhook configuration beside this gateway's config and say what would keep
    /// callbacks from arriving or being answered as meant, with what to change. Exits 0 (fine),
    /// 1 (warnings) or 2 (errors).
    Doctor {
        /// OpenIM's `config/webhooks.yml`.
        #[arg(long, value_name = "FILE")]
        openim: Option<PathBuf>,
        /// A file with the `IMENV_WEBHOOKS_*` variables of a Docker deployment (`KEY=VALUE` or
        /// `- KEY=VALUE` lines); they win over `--openim`, as in OpenIM.
        #[arg(long, value_name = "FILE")]
        openim_env: Option<PathBuf>,
        /// Also send a harmless request through this URL (OpenIM's `url`; default: the one read)
        /// as OpenIM would, and say whether it reached this gateway.
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        probe: Option<String>,
    },
    /// Print the callbacks a running gateway answers, one line each as they arrive.
    Tail {
        /// The gateway's admin API (its admin_listen, or its port when it has none).
        #[arg(long, default_value = "http://127.0.0.1:10006")]
        admin: String,
        /// A file holding the admin API's bearer token (`admin_token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Only this command.
        #[arg(long)]
        command: Option<String>,
        /// Write each callback's record as one JSON line (a capture for `replay`).
        #[arg(long)]
        jsonl: bool,
    },
    /// Send a capture (`tail --jsonl`, or GET /admin/callbacks?format=jsonl) again as OpenIM
    /// would, and print each envelope next to the recorded one.
    Replay {
        /// The capture: one record per line.
        file: PathBuf,
        /// The gateway to send to, as OpenIM's `url` (e.g. http://127.0.0.1:10006/callbackExample).
        #[arg(long)]
        to: String,
        /// As fast as possible instead of at the recorded pace.
        #[arg(long)]
        fast: bool,
    },
    /// Write the contract compiled into this binary, for generating stubs in any language.
    Proto {
        /// Directory to write the `.proto` files into (as `openim/callback/v1/*.proto`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// File to write the encoded `FileDescriptorSet` to (e.g. for `protoc --descriptor_set_in`
        /// or `buf build`).
        #[arg(long)]
        descriptor_set: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Proto {
        out,
        descriptor_set,
    }) = &cli.command
    {
        return write_proto(out.as_deref(), descriptor_set.as_deref());
    }
    let overrides = Overrides {
        path: cli.config.clone(),
        flags: Flags {
            listen: cli.listen,
            admin_listen: cli.admin_listen,
            upstream: cli.upstream.clone(),
            demo: cli.demo,
        },
    };
    let config = match overrides.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("openim-callback-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter (`tracing.otlp`) runs its exports there. A
    // subcommand's stdout is its result: its log lines (a discovery task's DNS warning during
    // `check`) go to stderr.
    let output = match cli.command {
        None => openim_callback_gateway::telemetry::LogOutput::Stdout,
        Some(_) => openim_callback_gateway::telemetry::LogOutput::Stderr,
    };
    let telemetry = {
        let _rt = runtime.enter();
        openim_callback_gateway::telemetry::init_to(&config.log, &config.tracing, output)
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openim-callback-gateway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Some(Command::Check) => {
                let mut built = config.clone();
                // What the start adds for the demo: the example service (no socket is opened).
                built.attach_demo(&UpstreamConfig::single("http://127.0.0.1:1"));
                if let Err(e) = openim_callback_gateway::gateway::Gateway::new(&built, None) {
                    eprintln!("openim-callback-gateway: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
                match serde_json::to_string_pretty(&config) {
                    Ok(text) => {
                        if let Err(e) = print_lines([text]) {
                            return stdout_failed(&e, ExitCode::SUCCESS);
                        }
                        for warning in config.warnings() {
                            eprintln!("warning: {warning}");
                        }
                        if config.serves_demo() {
                            eprintln!(
                                "note: demo: {}",
                                openim_callback_gateway::config::DEMO_NOTICE
                            );
                        }
                        eprintln!("configuration is valid (effective settings above)");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("openim-callback-gateway: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Some(Command::Routes {
                json, admin: None, ..
            }) => routes(&config, json),
            Some(Command::Routes {
                json,
                admin: Some(admin),
                token_file,
            }) => match live_config(&admin, token_file.as_deref()).await {
                Ok(live) => routes(&live, json),
                Err(e) => {
                    eprintln!("openim-callback-gateway routes: {e}");
                    ExitCode::FAILURE
                }
            },
            Some(Command::Tail {
                admin,
                token_file,
                command,
                jsonl,
            }) => tail(&admin, token_file.as_deref(), command.as_deref(), jsonl).await,
            Some(Command::Replay { file, to, fast }) => replay(&file, &to, fast).await,
            Some(Command::Doctor {
                openim,
                openim_env,
                probe,
            }) => doctor(&config, openim, openim_env, probe).await,
            Some(Command::Spool {
                admin,
                token_file,
                command,
            }) => {
                let token = match admin_token(token_file.as_deref()) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("openim-callback-gateway spool: {e}");
                        return ExitCode::from(2);
                    }
                };
                match openim_callback_gateway::spool::cli::run(
                    command,
                    &config.spool,
                    admin.as_deref(),
                    token,
                )
                .await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    // The reader went away (`spool list | head`): nothing left to say.
                    Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("openim-callback-gateway spool: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Some(Command::Proto { .. }) => ExitCode::SUCCESS,
            None => {
                // Logged now that the subscriber exists (config loading ran before it).
                for warning in config.warnings() {
                    tracing::warn!(key = %warning.key, "{}", warning.message);
                }
                serve(config, overrides).await
            }
        }
    });
    // The runtime's workers still run: the last batch of spans is exported on them.
    telemetry.shutdown();
    code
}

/// The bearer token in `token_file` (`--token-file`, the gateway's `admin_token_file`), if given.
fn admin_token(token_file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    token_file
        .map(openim_callback_gateway::config::read_admin_token)
        .transpose()
        .map(|t| t.map(|t| t.expose().to_owned()))
        .map_err(|e| format!("--token-file: {e}"))
}

/// The running configuration of a gateway, from its `GET /admin/config`.
async fn live_config(admin: &str, token_file: Option<&std::path::Path>) -> Result<Config, String> {
    use openim_callback_gateway::cli::admin::AdminClient;
    let token = admin_token(token_file)?;
    let client = AdminClient::parse(admin, token).map_err(|e| e.to_string())?;
    let answer: serde_json::Value = client
        .call("GET", "/admin/config", &[])
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(answer["config"].clone())
        .map_err(|e| format!("{admin}/admin/config: not a configuration: {e}"))
}

/// `tail`: the live callbacks of a running gateway.
async fn tail(
    admin: &str,
    token_file: Option<&std::path::Path>,
    command: Option<&str>,
    jsonl: bool,
) -> ExitCode {
    use openim_callback_gateway::cli::{admin::AdminClient, tail};
    let token = match admin_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match AdminClient::parse(admin, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout();
    match tail::run(&client, command, jsonl, &mut out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openim-callback-gateway tail: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `replay`: a capture sent again; exit 0 when every envelope is as recorded, 1 when some
/// changed or failed, 2 when the capture cannot be used.
async fn replay(file: &std::path::Path, to: &str, fast: bool) -> ExitCode {
    use openim_callback_gateway::cli::replay;
    let records = match replay::read(file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openim-callback-gateway replay: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout();
    match replay::run(&records, to, fast, &mut out).await {
        Ok(s) if s.changed == 0 && s.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("openim-callback-gateway replay: {e}");
            ExitCode::from(2)
        }
    }
}

/// `doctor`: OpenIM's webhook configuration against this gateway's; the findings on stdout.
async fn doctor(
    config: &Config,
    openim: Option<PathBuf>,
    openim_env: Option<PathBuf>,
    probe: Option<String>,
) -> ExitCode {
    use openim_callback_gateway::doctor::{self, OpenImWebhooks};
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("openim-callback-gateway doctor: {e}");
        ExitCode::from(2)
    };
    let catalog = match openim_callback_gateway::catalog::Catalog::contract() {
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

/// The config file and the flags that override it: loaded once at start, and again by every
/// reload, so that a reload sees the same overrides.
#[derive(Debug, Clone)]
struct Overrides {
    path: Option<PathBuf>,
    flags: Flags,
}

impl Overrides {
    /// The configuration, or why not (the caller says "invalid configuration" once).
    fn load(&self) -> Result<Config, String> {
        Config::load_with(self.path.as_deref(), &self.flags).map_err(|e| e.to_string())
    }
}

/// Writes lines to stdout, stopping at the first error (a closed pipe: `routes | head -1`).
fn print_lines(lines: impl IntoIterator<Item = String>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// Whether an error is, or was caused by, writing to a closed pipe.
fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The exit of a command whose output could not be written: quietly `done` (what the command
/// would have exited with) when the reader closed the pipe (as `head` does), else the error and 1.
fn stdout_failed(e: &std::io::Error, done: ExitCode) -> ExitCode {
    if broken_pipe(e) {
        return done;
    }
    eprintln!("openim-callback-gateway: cannot write to stdout: {e}");
    ExitCode::FAILURE
}

async fn serve(config: Config, overrides: Overrides) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(*config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "openim-callback-gateway: cannot listen on {}: {e}",
                config.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let source = openim_callback_gateway::reload::ConfigSource {
        path: overrides.path.clone(),
        load: std::sync::Arc::new(move || overrides.load()),
    };
    match openim_callback_gateway::run_reloadable(config, listener, shutdown_signal(), Some(source))
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped");
            eprintln!("openim-callback-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C: stop accepting, finish in-flight requests, flush the spool.
/// The handlers are installed when this is called, not when the future is first polled, so that
/// a SIGTERM right after the "listening" line drains instead of killing the process.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {},
            () = wait(int) => {},
        }
    }
}

/// Ctrl-C: stop accepting, finish in-flight requests, flush the spool.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `routes`: the table every callback is routed by, from the same code the gateway uses.
fn routes(config: &Config, json: bool) -> ExitCode {
    use openim_callback_gateway::catalog::{Catalog, Phase};
    use openim_callback_gateway::config::Delivery;
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
            openim_callback_gateway::config::FailurePolicy::Continue => "continue".to_owned(),
            openim_callback_gateway::config::FailurePolicy::Reject => {
                format!("reject {}", s.reject_code)
            }
        };
        let gate = openim_callback_gateway::gate::Gate::build(
            &s,
            &config.bots,
            openim_callback_gateway::fields::FieldNumbers::of(&entry.request()),
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

/// `proto`: needs no configuration, so it runs before the config is loaded.
fn write_proto(
    out: Option<&std::path::Path>,
    descriptor_set: Option<&std::path::Path>,
) -> ExitCode {
    if out.is_none() && descriptor_set.is_none() {
        eprintln!("openim-callback-gateway proto: give --out DIR and/or --descriptor-set FILE");
        return ExitCode::from(2);
    }
    match openim_callback_gateway::proto::write_contract(out, descriptor_set) {
        Ok(paths) => match print_lines(paths.iter().map(|p| p.display().to_string())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
        },
        Err(e) => {
            eprintln!("openim-callback-gateway proto: {e}");
            ExitCode::FAILURE
        }
    }
}
