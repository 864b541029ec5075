//! The `openim-callback-gateway` binary: flags, config, logging, then `run` or the subcommand
//! (each one's work is in `openim_callback_gateway::cli`).

use clap::{Parser, Subcommand};
use openim_callback_gateway::cli;
use openim_callback_gateway::config::{Config, Flags};
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
        command: cli::spool::SpoolCommand,
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
    let args = Cli::parse();
    if let Some(Command::Proto {
        out,
        descriptor_set,
    }) = &args.command
    {
        return cli::proto::run(out.as_deref(), descriptor_set.as_deref());
    }
    let overrides = Overrides {
        path: args.config.clone(),
        flags: Flags {
            listen: args.listen,
            admin_listen: args.admin_listen,
            upstream: args.upstream.clone(),
            demo: args.demo,
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
    let output = match args.command {
        None => openim_callback_gateway::telemetry::LogOutput::Stdout,
        Some(_) => openim_callback_gateway::telemetry::LogOutput::Stderr,
    };
    let telemetry = {
        let _rt = runtime.enter();
        openim_callback_gateway::telemetry::init_to(&config.log, &config.tracing, output)
    };
    let mut telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openim-callback-gateway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async move {
        match args.command {
            Some(Command::Check) => cli::check::run(&config),
            Some(Command::Routes {
                json,
                admin,
                token_file,
            }) => cli::routes::run(&config, json, admin.as_deref(), token_file.as_deref()).await,
            Some(Command::Tail {
                admin,
                token_file,
                command,
                jsonl,
            }) => {
                cli::tail::command(&admin, token_file.as_deref(), command.as_deref(), jsonl).await
            }
            Some(Command::Replay { file, to, fast }) => {
                cli::replay::command(&file, &to, fast).await
            }
            Some(Command::Doctor {
                openim,
                openim_env,
                probe,
            }) => cli::doctor::run(&config, openim, openim_env, probe).await,
            Some(Command::Spool {
                admin,
                token_file,
                command,
            }) => {
                cli::spool::command(
                    command,
                    &config.spool,
                    admin.as_deref(),
                    token_file.as_deref(),
                )
                .await
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
    telemetry.shutdown_traces();
    // Then the tasks still running stop (what they log on the way out is queued), and the log
    // lines still queued are written: the last line of every exit reaches stdout.
    drop(runtime);
    telemetry.shutdown();
    code
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
