//! `openim-callback-example PORT`: serves the example hook service on `127.0.0.1:PORT` and prints
//! `listening on 127.0.0.1:PORT` once it accepts calls (see `examples/POLICY.md`).

use openim_callback_example::{ExampleConfig, routes};
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
    println!("listening on {addr}");
    let served = tonic::transport::Server::builder()
        .add_routes(routes(ExampleConfig::default()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openim-callback-example: {e}");
            ExitCode::FAILURE
        }
    }
}
