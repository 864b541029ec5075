//! Only OpenIM gets in: the inbound checks (secret path prefix, shared-secret header, source
//! CIDRs with trusted proxies, TLS with client certificates and certificate reload), the admin
//! token (routes, `/metrics`, the `spool --admin` CLI), the refusal to start an unprotected
//! admin API, and secrets kept out of logs and `check-config`. All through the real binary over
//! real sockets.

use crate::support::process;
use crate::support::process::{BIN, Gateway, connect, request, spawn_with_env};
use crate::support::write_file as write;
use crate::support::*;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CREATE: &str = "callbackBeforeCreateGroupCommand";

/// Starts the binary on `yaml` (a config file in `dir`) and waits for it to listen.
fn start(dir: &Path, yaml: &str) -> Gateway {
    let cfg = write(dir, "gateway.yaml", yaml);
    spawn_with_env(
        &["--config", &cfg, "--listen", "127.0.0.1:0"],
        &dir.join("spool"),
        &[],
    )
}

fn post(addr: &str, path: &str, headers: &[(&str, &str)]) -> process::Reply {
    request(&mut connect(addr), "POST", path, headers, &payload(CREATE)).unwrap()
}

fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> process::Reply {
    request(&mut connect(addr), "GET", path, headers, b"").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn path_secrets_and_header_admit_openim_and_refuse_everyone_else() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = write(dir.path(), "path-secrets", "# rotated in\nnew-Secret-2\n\n");
    let header = write(dir.path(), "header-values", "hdr-value-1\n");
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\n\
         defaults: {{delivery: sync}}\n\
         auth:\n  path_secrets: [old-Secret-1]\n  path_secrets_file: {secrets}\n\
         \x20 header: {{name: X-Callback-Secret, values_file: {header}}}\n",
        up.uri()
    );
    let gw = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || start(&dir, &yaml)
    })
    .await
    .unwrap();
    let addr = gw.addr.clone();
    let (ok_old, ok_new, wrong, missing, no_header, wrong_header, metrics) =
        tokio::task::spawn_blocking(move || {
            let h = [("X-Callback-Secret", "hdr-value-1")];
            (
                post(
                    &addr,
                    &format!("/old-Secret-1/callbackExample/{CREATE}"),
                    &h,
                ),
                post(
                    &addr,
                    &format!("/new-Secret-2/{CREATE}?contenttype=json"),
                    &h,
                ),
                post(&addr, &format!("/not-the-secret/{CREATE}"), &h),
                post(&addr, &format!("/{CREATE}"), &h),
                post(&addr, &format!("/new-Secret-2/{CREATE}"), &[]),
                post(
                    &addr,
                    &format!("/new-Secret-2/{CREATE}"),
                    &[("X-Callback-Secret", "hdr-value-2")],
                ),
                get(&addr, "/metrics", &[]),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        (ok_old.status, ok_old.json()["nextCode"].clone()),
        (200, 0.into())
    );
    assert_eq!(ok_new.status, 200, "{ok_new:?}");
    assert_eq!(ok_new.json(), allow());
    for refused in [&wrong, &missing, &no_header, &wrong_header] {
        assert_eq!(refused.status, 401, "{refused:?}");
        assert!(refused.body.len() < 64, "a short answer: {refused:?}");
    }
    assert_eq!(
        up.calls().len(),
        2,
        "refused requests never reach the upstream"
    );
    let metrics = String::from_utf8(metrics.body).unwrap();
    assert!(
        metrics.contains(r#"gateway_auth_refused_total{reason="path"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_auth_refused_total{reason="header"} 2"#),
        "{metrics}"
    );
    let log = gw.log_with("callback refused by inbound auth", 4);
    assert!(log.contains("callback refused by inbound auth"), "{log}");
    assert!(
        log.contains("source=127.0.0.1"),
        "the source address is logged: {log}"
    );
    for secret in [
        "old-Secret-1",
        "new-Secret-2",
        "not-the-secret",
        "hdr-value",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log");
        assert!(!metrics.contains(secret), "{secret} appears in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn source_cidrs_and_forwarded_for_from_trusted_proxies_only() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n",
        up.uri()
    );
    let only_10 = format!("{base}auth: {{allow_cidrs: [10.0.0.0/8]}}\n");
    let via_proxy = format!(
        "{base}auth: {{allow_cidrs: [10.0.0.0/8, 192.0.2.7], trusted_proxies: [127.0.0.1/32]}}\n"
    );
    let d = dir.path().to_owned();
    let (direct, spoofed, through_proxy, proxy_spoof) = tokio::task::spawn_blocking(move || {
        let gw = start(&d, &only_10);
        let direct = post(&gw.addr, &format!("/{CREATE}"), &[]);
        // Without trusted proxies, X-Forwarded-For is ignored.
        let spoofed = post(
            &gw.addr,
            &format!("/{CREATE}"),
            &[("X-Forwarded-For", "10.1.2.3")],
        );
        drop(gw);
        let gw = start(&d, &via_proxy);
        let through = post(
            &gw.addr,
            &format!("/{CREATE}"),
            &[("X-Forwarded-For", "10.1.2.3")],
        );
        let spoof = post(
            &gw.addr,
            &format!("/{CREATE}"),
            &[("X-Forwarded-For", "203.0.113.5")],
        );
        (direct, spoofed, through, spoof)
    })
    .await
    .unwrap();
    assert_eq!(direct.status, 403, "127.0.0.1 is not in 10.0.0.0/8");
    assert_eq!(
        spoofed.status, 403,
        "an untrusted peer cannot claim an address"
    );
    assert_eq!(through_proxy.status, 200, "{through_proxy:?}");
    assert_eq!(through_proxy.json(), allow());
    assert_eq!(proxy_spoof.status, 403);
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_its_token_and_the_cli_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "admin-token", "tok-3f9a1c\n");
    let wrong = write(dir.path(), "wrong-token", "nope\n");
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['http://127.0.0.1:1']}}}}\n\
         admin_listen: 127.0.0.1:0\nadmin_token_file: {token}\nadmin_protect_metrics: true\n"
    );
    let d = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let gw = start(&d, &yaml);
        let admin = gw.admin_addr().expect("the admin port is logged");
        let bearer = [("Authorization", "Bearer tok-3f9a1c")];
        let replies = (
            get(&admin, "/admin/spool", &[]),
            get(&admin, "/admin/spool", &[("Authorization", "Bearer nope")]),
            get(&admin, "/admin/spool", &bearer),
            get(&admin, "/healthz", &[]),
            get(&admin, "/metrics", &[]),
            get(&admin, "/metrics", &bearer),
        );
        let cli = |token_file: Option<&str>| {
            let mut cmd = Command::new(BIN);
            cmd.args(["spool", "--admin", &format!("http://{admin}"), "count"]);
            if let Some(f) = token_file {
                cmd.args(["--token-file", f]);
            }
            cmd.env("OPENIM_GATEWAY_SPOOL__DIR", d.join("other-spool"))
                .output()
                .unwrap()
        };
        let with = cli(Some(&token));
        let without = cli(None);
        let wrong = cli(Some(&wrong));
        let log = gw.log_text();
        (replies, with, without, wrong, log)
    })
    .await
    .unwrap();
    let ((none, bad, ok, health, metrics_open, metrics_ok), with, without, wrong, log) = out;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_eq!(bad.status, 401);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(health.status, 200, "health stays open for probes");
    assert_eq!(metrics_open.status, 401, "admin_protect_metrics");
    assert_eq!(metrics_ok.status, 200);
    assert!(with.status.success(), "{with:?}");
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("pending"),
        "{with:?}"
    );
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("--token-file"),
        "{without:?}"
    );
    assert!(!wrong.status.success());
    assert!(!log.contains("tok-3f9a1c"), "the token is not logged");
}

#[test]
fn an_exposed_admin_api_without_a_token_is_refused_at_start_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "listen: 0.0.0.0:0\nupstreams: {default: {endpoints: ['http://127.0.0.1:1']}}\n";
    let cfg = write(dir.path(), "gateway.yaml", yaml);
    let out = Command::new(BIN)
        .args(["--config", &cfg, "check-config"])
        .env("OPENIM_GATEWAY_SPOOL__DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin_token_file") && err.contains("admin_insecure"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--config", &cfg])
        .env("OPENIM_GATEWAY_SPOOL__DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the start is refused too");

    let cfg = write(
        dir.path(),
        "insecure.yaml",
        &format!("{yaml}admin_insecure: true\n"),
    );
    let out = Command::new(BIN)
        .args(["--config", &cfg, "check-config"])
        .env("OPENIM_GATEWAY_SPOOL__DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn check_config_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gateway.yaml",
        "demo: true\nauth:\n  path_secrets: [pathsecret-8d1]\n  header: {name: X-S, values: [hdrsecret-77]}\n",
    );
    let out = Command::new(BIN)
        .args(["--config", &cfg, "check-config"])
        .env("OPENIM_GATEWAY_AUTH__ALLOW_CIDRS", "[10.0.0.0/8]")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Secrets from the environment are redacted the same way.
    let env = Command::new(BIN)
        .args(["--config", &cfg, "check-config"])
        .env(
            "OPENIM_GATEWAY_AUTH__PATH_SECRETS",
            "[envsecret-1, envsecret-2]",
        )
        .output()
        .unwrap();
    let env_all = String::from_utf8_lossy(&env.stdout);
    assert_eq!(env_all.matches("<redacted>").count(), 3, "{env_all}");
    assert!(!env_all.contains("envsecret"), "{env_all}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("<redacted>"), "{all}");
    assert!(all.contains("10.0.0.0/8"), "env overrides apply: {all}");
    assert!(
        !all.contains("pathsecret-8d1") && !all.contains("hdrsecret-77"),
        "{all}"
    );
}

/// TLS material of one test: a CA, a server certificate for 127.0.0.1, a client certificate, and
/// a second CA whose client certificate must be refused.
struct Pki {
    ca: pki::Ca,
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca = pki::ca("test CA");
    let stranger_ca = pki::ca("stranger CA");
    let client = pki::leaf(&ca, "openim", &[]);
    let stranger = pki::leaf(&stranger_ca, "stranger", &[]);
    Pki {
        ca,
        client,
        stranger,
    }
}

/// A server certificate for 127.0.0.1 and its key, issued by `ca`.
fn server_cert(ca: &pki::Ca, name: &str) -> (String, String) {
    pki::leaf(ca, name, &["127.0.0.1"])
}

/// A TLS client connection to `addr`, trusting `ca_pem`, presenting `client` when given; returns
/// the connection and the server certificate's DER.
fn tls_connect(
    addr: &str,
    ca_pem: &str,
    client: Option<&(String, String)>,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    Vec<u8>,
)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let tcp = connect(addr);
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    Ok((tls, cert))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_client_certificates_and_a_certificate_that_rotates() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let (cert, key) = server_cert(&pki.ca, "gateway-1");
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &key);
    let ca_file = write(dir.path(), "ca.crt", &pki.ca.pem);
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n\
         tls: {{cert_file: {cert_file}, key_file: {key_file}, client_ca_file: {ca_file}}}\n",
        up.uri()
    );
    let d = dir.path().to_owned();
    let gw = tokio::task::spawn_blocking(move || start(&d, &yaml))
        .await
        .unwrap();
    let addr = gw.addr.clone();
    let ca_pem = pki.ca.pem.clone();
    let (client, stranger) = (pki.client.clone(), pki.stranger.clone());
    let (reply, first_cert, no_cert, wrong_ca, plain) = tokio::task::spawn_blocking(move || {
        let (mut tls, served) = tls_connect(&addr, &ca_pem, Some(&client)).unwrap();
        let reply = request(
            &mut tls,
            "POST",
            &format!("/{CREATE}"),
            &[],
            &payload(CREATE),
        );
        let no_cert = tls_connect(&addr, &ca_pem, None).and_then(|(mut t, _)| {
            request(&mut t, "POST", &format!("/{CREATE}"), &[], &payload(CREATE))
        });
        let wrong_ca = tls_connect(&addr, &ca_pem, Some(&stranger)).and_then(|(mut t, _)| {
            request(&mut t, "POST", &format!("/{CREATE}"), &[], &payload(CREATE))
        });
        // Never plaintext on a TLS port.
        let plain = request(
            &mut connect(&addr),
            "POST",
            &format!("/{CREATE}"),
            &[],
            b"{}",
        );
        (reply.unwrap(), served, no_cert, wrong_ca, plain)
    })
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["nextCode"], 0);
    assert!(
        no_cert.is_err(),
        "a client without a certificate is refused"
    );
    assert!(
        wrong_ca.is_err(),
        "a certificate from another CA is refused"
    );
    assert!(plain.is_err(), "plain HTTP on the TLS port gets no answer");
    assert_eq!(up.calls().len(), 1);

    // cert-manager rotates the files: new connections get the new certificate.
    let (cert2, key2) = server_cert(&pki.ca, "gateway-2");
    std::fs::write(dir.path().join("tls.key"), key2).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &cert2).unwrap();
    let addr = gw.addr.clone();
    let ca_pem = pki.ca.pem.clone();
    let client = pki.client.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, served) = tls_connect(&addr, &ca_pem, Some(&client)).unwrap();
            if served != first_cert {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .unwrap();
    assert!(rotated, "the rotated certificate is served within 30 s");
    crate::support::eventually(
        "the certificate reload's log line",
        Duration::from_secs(10),
        async || gw.log_text().contains("inbound TLS certificate reloaded"),
    )
    .await;
}

/// The documented config with every control on (`config/gateway.secure.yaml`), pointed at test
/// material: a callback with TLS + client certificate + path secret + header is served; each
/// missing piece is refused; the admin port needs its token, for `/metrics` too.
#[tokio::test(flavor = "multi_thread")]
async fn the_secure_example_config_turns_every_control_on() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = pki();
    let (cert, key) = server_cert(&pki.ca, "gateway");
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    write(d, "secrets/admin-token", "adm-tok-1\n");
    write(d, "secrets/path-secrets", "psec-a\npsec-b\n");
    write(d, "secrets/header-secrets", "hsec-1\n");
    write(d, "tls.crt", &cert);
    write(d, "tls.key", &key);
    write(d, "ca.crt", &pki.ca.pem);
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.secure.yaml"),
    )
    .unwrap()
    .replace(
        "/run/secrets/openim-gateway/",
        &format!("{}/secrets/", d.display()),
    )
    .replace("/etc/openim-gateway/tls/", &format!("{}/", d.display()))
    .replace(
        "/var/lib/openim-callback-gateway/spool",
        &d.join("spool").display().to_string(),
    )
    .replace("http://127.0.0.1:50051", &up.uri())
    .replace("admin_listen: 0.0.0.0:9090", "admin_listen: 127.0.0.1:0")
    // The test's client is on loopback, not in OpenIM's 10.0.0.0/8.
    .replace("allow_cidrs: [10.0.0.0/8]", "allow_cidrs: [127.0.0.0/8]");
    let d = d.to_owned();
    let ca_pem = pki.ca.pem.clone();
    let client = pki.client.clone();
    let (served, no_header, no_secret, admin_open, admin_ok, metrics_open) =
        tokio::task::spawn_blocking(move || {
            let gw = start(&d, &yaml);
            let call = |path: &str, headers: &[(&str, &str)]| {
                let (mut tls, _) = tls_connect(&gw.addr, &ca_pem, Some(&client)).unwrap();
                request(&mut tls, "POST", path, headers, &payload(CREATE)).unwrap()
            };
            let h = [("X-Callback-Secret", "hsec-1")];
            let admin = gw.admin_addr().unwrap();
            (
                call(&format!("/psec-b/{CREATE}"), &h),
                call(&format!("/psec-b/{CREATE}"), &[]),
                call(&format!("/{CREATE}"), &h),
                get(&admin, "/admin/spool", &[]),
                get(
                    &admin,
                    "/admin/spool",
                    &[("Authorization", "Bearer adm-tok-1")],
                ),
                get(&admin, "/metrics", &[]),
            )
        })
        .await
        .unwrap();
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.json()["nextCode"], 0);
    assert_eq!(no_header.status, 401);
    assert_eq!(no_secret.status, 401);
    assert_eq!(admin_open.status, 401);
    assert_eq!(admin_ok.status, 200, "{admin_ok:?}");
    assert_eq!(metrics_open.status, 401);
    assert_eq!(up.calls().len(), 1);
}
