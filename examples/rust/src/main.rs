//! `openim-callback-example PORT`: serves the example hook service on `127.0.0.1:PORT`, with
//! `grpc.health.v1` and server reflection, prints `listening on 127.0.0.1:PORT` once it accepts
//! calls, and one `after <command> <delivery-id>` line per after-event (see `examples/POLICY.md`).

use openim_callback_example::{ExampleConfig, ExampleUpstream};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use tokio_stream::wrappers::TcpListenerStream;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: openim-callback-example PORT");
            return ExitCode::from(2);
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("openim-callback-example: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Health: SERVING for the server as a whole ("") and for each callback service.
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in [
        "",
        "openim.callback.v1.MessageCallbackService",
        "openim.callback.v1.PushCallbackService",
        "openim.callback.v1.UserCallbackService",
        "openim.callback.v1.FriendCallbackService",
        "openim.callback.v1.GroupCallbackService",
        "openim.callback.v1.ConversationCallbackService",
    ] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    // Reflection from the contract's descriptor set, so `grpcurl -plaintext ADDR list` works.
    let reflection = match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(openim_callback_contract::DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openim-callback-example: reflection: {e}");
            return ExitCode::FAILURE;
        }
    };
    let routes = ExampleUpstream::new(ExampleConfig::default())
        .with_after_lines()
        .into_routes()
        .add_service(health_service)
        .add_service(reflection);
    println!("listening on {addr}");
    let served = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown())
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openim-callback-example: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (what `kill` and Kubernetes send) or Ctrl-C.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
