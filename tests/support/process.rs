//! The gateway binary as a process, and an HTTP/1.1 client that behaves like OpenIM's Go client
//! (one keep-alive connection, the whole body written, Go's headers), for the tests that need real
//! sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_openim-callback-gateway");

/// A running gateway process, killed on drop.
pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) addr: String,
    /// Every stdout line (the log) so far.
    pub(crate) logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    /// The log so far, as one text.
    pub(crate) fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The log once it has `n` lines containing `marker`: a line arrives a few milliseconds after
    /// what logged it (the gateway's log writer thread, then the pipe), so a test that looks for
    /// the line of something it just did waits for it. Fails after 10 s.
    pub(crate) fn log_with(&self, marker: &str, n: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.lines().filter(|l| l.contains(marker)).count() >= n {
                return log;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} lines with {marker:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the admin port, from its log line (when `admin_listen` is set).
    pub(crate) fn admin_addr(&self) -> Option<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("admin port"))
            .and_then(|l| addr_in(l))
    }

    /// Peak resident memory of the process (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args` and extra environment variables: the exit code,
/// stdout and stderr.
pub(crate) fn run<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: impl IntoIterator<Item = (K, V)>,
) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the binary with `args` and waits (bounded) for its "listening" log line.
pub(crate) fn spawn(args: &[&str], spool_dir: &std::path::Path) -> Gateway {
    spawn_with_env(args, spool_dir, &[])
}

/// [`spawn`] with extra environment variables.
pub(crate) fn spawn_with_env(
    args: &[&str],
    spool_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Gateway {
    let mut child = Command::new(BIN)
        .args(args)
        // No pause between /readyz 503 and closing the listeners, unless a test asks for one.
        .env("OPENIM_GATEWAY_SHUTDOWN_DELAY", "0s")
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
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            if line.contains("listening")
                && let Some(addr) = addr_in(&line)
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway logs its listening address within 30 s");
    Gateway { child, addr, logs }
}

/// One HTTP/1.1 POST on an open connection; returns the status and the body.
pub(crate) fn post(conn: &mut TcpStream, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
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

/// Posts OpenIM's `callbackAfterQuitGroupCommand` for the users `user-<i>`, `i` in `users`, on
/// one connection, and asserts each is answered 200 with the allow envelope.
pub(crate) fn post_quit_events(addr: &str, users: std::ops::Range<usize>) {
    let mut conn = connect(addr);
    for i in users {
        let mut body = crate::support::read_json("payloads/callbackAfterQuitGroupCommand.json");
        body["userID"] = format!("user-{i}").into();
        let (code, json) = post(
            &mut conn,
            "/callbackExample/callbackAfterQuitGroupCommand",
            &crate::support::wire(&body),
        );
        assert_eq!((code, json), (200, crate::support::allow()), "event {i}");
    }
}

pub(crate) fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// A whole HTTP/1.1 response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request with extra headers on an open connection (any stream: TCP or TLS).
pub(crate) fn request<S: Read + Write>(
    conn: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n\
         Content-Type: application/json; charset=utf-8\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // One write: head and body in two writes meet Nagle and delayed ACK (40 ms a request).
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    conn.write_all(&all)?;
    read_reply(conn)
}

/// Reads one response (Content-Length bodies only, as the gateway sends).
pub(crate) fn read_reply<S: Read>(conn: &mut S) -> std::io::Result<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {text:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The `addr` field of a log line, text (`addr=…`) or JSON (`"addr":"…"`).
fn addr_in(line: &str) -> Option<String> {
    if let Some(rest) = line.split("\"addr\":\"").nth(1) {
        return rest.split('"').next().map(str::to_owned);
    }
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
}
