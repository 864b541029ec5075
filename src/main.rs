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
    #[arg(long, env = "OPENIM_GATEWAY_CONFIG")]
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
    /// Load and validate the configuration, print the effective settings, and exit.
    CheckConfig,
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
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("openim-callback-gateway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(uri) = cli.upstream {
        config
            .upstreams
            .insert(DEFAULT_UPSTREAM.into(), UpstreamConfig::single(uri));
        if let Err(e) = config.validate() {
            eprintln!("openim-callback-gateway: invalid --upstream: {e}");
            return ExitCode::from(2);
        }
    }
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
            Some(Command::CheckConfig) => match serde_json::to_string_pretty(&config) {
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
            },
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
                serve(config).await
            }
        }
    });
    // The runtime's workers still run: the last batch of spans is exported on them.
    telemetry.shutdown();
    code
}

async fn serve(config: Config) -> ExitCode {
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
    match openim_callback_gateway::run(config, listener, shutdown_signal()).await {
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
    tracing::info!("shutting down: draining in-flight callbacks");
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
