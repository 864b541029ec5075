//! A real `redis-server` for the tests of the Redis spool backend: on a free loopback port, in
//! its own temp dir, AOF on (`--appendonly yes --appendfsync always --save ''`), stopped (kill)
//! on drop. `.ci/run` installs `redis-server` from Debian's packages; without it each Redis test
//! fails with one line saying what to install ([`MISSING`]). `support::redis_server` of the
//! integration tests; the Redis spool's unit tests and `bench/spool_load.rs` include it with
//! `#[path]`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The one line a Redis test fails with when `redis-server` is not installed.
pub(crate) const MISSING: &str = "redis-server not found: install it (apt-get install redis-server) \
                           to run the Redis spool tests";

/// Fails the test with [`MISSING`] when `redis-server` is not installed, with the OS error
/// otherwise.
fn cannot_run(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        panic!("{MISSING}");
    }
    panic!("cannot run redis-server: {e}")
}

/// A running `redis-server`, killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

fn loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server on a free port in a new temp dir.
    pub(crate) fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra arguments (e.g. `--replicaof`).
    pub(crate) fn start_with(extra: &[&str]) -> RedisServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = RedisServer {
            child: None,
            port: loopback_port(),
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            _tmp: Some(tmp),
        };
        s.spawn();
        s
    }

    /// A server that will listen on `port` once [`RedisServer::restart`] is called: for tests
    /// of a Redis that is down at first.
    pub(crate) fn not_started() -> RedisServer {
        // Started later: say now if it cannot be.
        if let Err(e) = Command::new("redis-server").arg("--version").output() {
            cannot_run(&e);
        }
        let tmp = tempfile::tempdir().unwrap();
        RedisServer {
            child: None,
            port: loopback_port(),
            dir: tmp.path().to_owned(),
            extra: Vec::new(),
            _tmp: Some(tmp),
        }
    }

    /// A TLS-only server (`--port 0 --tls-port`), with a password (`--requirepass`). Ready
    /// once it accepts TCP connections (PING needs TLS).
    #[allow(dead_code, reason = "the Redis spool's unit tests use it")]
    pub(crate) fn start_tls(cert: &Path, key: &Path, password: &str) -> RedisServer {
        let tmp = tempfile::tempdir().unwrap();
        let port = loopback_port();
        let extra: Vec<String> = [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(tmp.path())
            .args(["--appendonly", "yes", "--save", "", "--loglevel", "warning"])
            .args(&extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| cannot_run(&e));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server TLS port did not open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            child: Some(child),
            port,
            dir: tmp.path().to_owned(),
            extra,
            _tmp: Some(tmp),
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| cannot_run(&e));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = self.command(&["PING"]) {
                // A server still loading its AOF answers -LOADING.
                if reply.starts_with("+PONG") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within 20 s on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of this server.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9 of the server (the AOF stays in its dir).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and dir (it loads its AOF).
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// One command over RESP, the first line of the answer (`+OK`, `:3`, `$5`…), or the
    /// whole bulk string for a bulk answer.
    pub(crate) fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        c.write_all(req.as_bytes())?;
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Some(n) = line.strip_prefix('$') {
            let n: i64 = n.trim().parse().unwrap_or(-1);
            if n < 0 {
                return Ok(String::new());
            }
            let mut body = vec![0; usize::try_from(n).unwrap() + 2];
            std::io::Read::read_exact(&mut r, &mut body)?;
            body.truncate(body.len() - 2);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        Ok(line.trim_end().to_owned())
    }

    /// An integer answer (`:N`).
    pub(crate) fn int(&self, args: &[&str]) -> i64 {
        let reply = self.command(args).unwrap();
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{args:?} answered {reply:?}, not an integer"))
    }

    /// The server's version, e.g. (7, 0).
    #[allow(dead_code, reason = "the Redis spool's unit tests use it")]
    pub(crate) fn version(&self) -> (u32, u32) {
        let info = self.command(&["INFO", "server"]).unwrap();
        let v = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("0.0")
            .trim()
            .to_owned();
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
