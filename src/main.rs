//! The `openim-callback-gateway` binary: flags, config, logging, then `run`.

use clap::{Parser, Subcommand};
use openim_callback_gateway::config::{Config, DEFAULT_UPSTREAM, UpstreamConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// OpenIM webhook callbacks in, typed gRPC calls out.
///
/// With no arguments it listens on 127.0.0.1:10006 and serves the built-in example upstream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// YAML config file (see config/gateway.example.yaml). OPENIM_GATEWAY_* variables override it.
    #[arg(long, env = "OPENIM_GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:10006 (overrides `listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// gRPC URI of the default upstream every command uses unless configured otherwise
    /// (overrides `upstreams.default`), e.g. http://127.0.0.1:50051.
    #[arg(long)]
    upstream: Option<String>,
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
        listen: cli.listen,
        upstream: cli.upstream.clone(),
    };
    let config = match overrides.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway: {e}");
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
    // Inside the runtime: the OTLP exporter (`tracing.otlp`) runs its exports there.
    let telemetry = {
        let _rt = runtime.enter();
        openim_callback_gateway::telemetry::init(&config.log, &config.tracing)
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
                if built.upstreams.is_empty() {
                    // What the start adds: the built-in example upstream (no socket is opened).
                    built.upstreams.insert(
                        DEFAULT_UPSTREAM.into(),
                        UpstreamConfig::single("http://127.0.0.1:1"),
                    );
                }
                if let Err(e) = openim_callback_gateway::gateway::Gateway::new(&built, None) {
                    eprintln!("openim-callback-gateway: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
                match serde_json::to_string_pretty(&config) {
                    Ok(text) => {
                        println!("{text}");
                        for warning in config.warnings() {
                            eprintln!("warning: {warning}");
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
            Some(Command::Routes { json }) => routes(&config, json),
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
                let token = match token_file
                    .as_deref()
                    .map(openim_callback_gateway::config::read_admin_token)
                    .transpose()
                {
                    Ok(t) => t.map(|t| t.expose().to_owned()),
                    Err(e) => {
                        eprintln!("openim-callback-gateway spool: --token-file: {e}");
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

/// `tail`: the live callbacks of a running gateway.
async fn tail(
    admin: &str,
    token_file: Option<&std::path::Path>,
    command: Option<&str>,
    jsonl: bool,
) -> ExitCode {
    use openim_callback_gateway::cli::{admin::AdminClient, tail};
    let token = match token_file
        .map(openim_callback_gateway::config::read_admin_token)
        .transpose()
    {
        Ok(t) => t.map(|t| t.expose().to_owned()),
        Err(e) => {
            eprintln!("openim-callback-gateway tail: --token-file: {e}");
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
    if !webhooks.sources.is_empty() {
        println!("OpenIM's webhooks from {}", webhooks.sources.join(" + "));
    }
    for finding in &findings {
        println!("{finding}");
    }
    let code = doctor::exit_code(&findings);
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    println!(
        "{} error(s), {} warning(s), {} note(s)",
        count(doctor::Severity::Error),
        count(doctor::Severity::Warning),
        count(doctor::Severity::Info)
    );
    ExitCode::from(code)
}

/// The config file and the flags that override it: loaded once at start, and again by every
/// reload, so that a reload sees the same overrides.
#[derive(Debug, Clone)]
struct Overrides {
    path: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    upstream: Option<String>,
}

impl Overrides {
    fn load(&self) -> Result<Config, String> {
        let mut config = Config::load(self.path.as_deref())
            .map_err(|e| format!("invalid configuration: {e}"))?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(uri) = &self.upstream {
            config
                .upstreams
                .insert(DEFAULT_UPSTREAM.into(), UpstreamConfig::single(uri.clone()));
            config
                .validate()
                .map_err(|e| format!("invalid --upstream: {e}"))?;
        }
        Ok(config)
    }
}

async fn serve(config: Config, overrides: Overrides) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
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
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
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
            .unwrap_or_else(|| "(built-in example)".into());
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
        rows.push(serde_json::json!({
            "command": entry.row.command,
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
        for row in rows {
            println!("{row}");
        }
        return ExitCode::SUCCESS;
    }
    let cols = [
        "command",
        "enabled",
        "upstream",
        "rpc",
        "timeout",
        "on_failure",
        "delivery",
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
        println!("{}", out.trim_end());
    };
    line(cols.iter().map(|c| c.to_uppercase()).collect());
    for row in &rows {
        line(cols.iter().map(|c| cell(row, c)).collect());
    }
    ExitCode::SUCCESS
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
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openim-callback-gateway proto: {e}");
            ExitCode::FAILURE
        }
    }
}
