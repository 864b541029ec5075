//! The gateway binary as a process, and an HTTP/1.1 client that behaves like OpenIM's Go client
//! (one keep-alive connection, the whole body written, Go's headers), for the tests that need real
//! sockets. Included with `#[path]` by the tests that run the binary.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_openim-callback-gateway");

/// A running gateway process, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `args` and waits (bounded) for its "listening" log line.
pub fn spawn(args: &[&str], spool_dir: &std::path::Path) -> Gateway {
    spawn_with_env(args, spool_dir, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(args: &[&str], spool_dir: &std::path::Path, env: &[(&str, &str)]) -> Gateway {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("OPENIM_GATEWAY_SPOOL__DIR", spool_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening") {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway logs its listening address within 30 s");
    Gateway { child, addr }
}

/// One HTTP/1.1 POST on an open connection; returns the status and the body.
pub fn post(conn: &mut TcpStream, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
         Content-Type: application/json; charset=utf-8\r\nOperationid: 1719800000123453781\r\n\
         Accept-Encoding: gzip\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (
        code,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

pub fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}
