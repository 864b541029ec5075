//! The upstream transport through the real gateway: TLS and mTLS with certificates made here,
//! certificate rotation, balancing over the addresses of a name, following a DNS change (a tiny
//! DNS server on 127.0.0.1 and upstreams on 127.0.0.1 and 127.0.0.2), an upstream killed under
//! load, and the resolver and discovery task on their own.

use crate::support::pki::{self, Ca, ca};
use crate::support::*;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use openim_callback_gateway::config::Config;
use openim_callback_gateway::gateway::Gateway;
use openim_callback_gateway::upstream::Upstreams;
use openim_callback_gateway::upstream::resolve::{
    DnsResolver, Resolve, ResolveError, SystemResolver,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

const CREATE: &str = "callbackBeforeCreateGroupCommand";
/// Fail closed, so that the envelope tells a failed call from a successful one.
const FAIL_CLOSED: &str =
    "defaults: {delivery: sync, timeout: 2s, on_failure: reject, reject_code: 20500}";

/// A gateway whose `default` upstream is `upstream` (a YAML flow mapping), failing closed.
fn gateway_for(upstream: &str, extra: &str) -> Gateway {
    let yaml = format!("upstreams: {{default: {upstream}}}\n{FAIL_CLOSED}\n{extra}");
    gateway(&Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}")))
}

async fn create(gw: &Gateway) -> Answer {
    let a = post_command(gw, CREATE, payload(CREATE)).await;
    assert_envelope(&a);
    a
}

fn failed_closed(a: &Answer) -> bool {
    a.json["errCode"] == 20500
}

// ---------------------------------------------------------------------------------------------
// Logs of this test's thread (every test runs on its own current-thread runtime).

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A certificate and key (PEM) for `names` (empty: a client certificate).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    pki::leaf(ca, names.first().copied().unwrap_or("client"), names)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A TLS upstream on 127.0.0.1 with a certificate for `hooks.internal` only (not its address),
/// requiring a client certificate from `client_ca` when given.
async fn tls_upstream(server_ca: &Ca, client_ca: Option<&Ca>) -> Upstream {
    let (cert, key) = leaf(server_ca, &["hooks.internal"]);
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(&ca.pem));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Upstream::start_tls(listener, tls).await
}

// ---------------------------------------------------------------------------------------------
// TLS.

#[tokio::test]
async fn tls_with_a_ca_file_verifies_the_server_name_not_the_address() {
    let server_ca = ca("upstream CA");
    let up = tls_upstream(&server_ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &server_ca.pem);
    let with_name = format!(
        "{{endpoints: ['https://{}'], tls: {{ca_file: '{}', server_name: hooks.internal}}}}",
        up.addr,
        ca_file.display()
    );
    assert_eq!(create(&gateway_for(&with_name, "")).await.json, allow());
    let call = up.only_call();
    assert_eq!(call.rpc, "BeforeCreateGroup");
    assert_eq!(
        call.authority,
        up.addr.to_string(),
        "the configured authority"
    );

    // The same CA without server_name: the certificate is not for 127.0.0.1.
    let (logs, _guard) = Logs::capture();
    let without = format!(
        "{{endpoints: ['https://{}'], tls: {{ca_file: '{}'}}}}",
        up.addr,
        ca_file.display()
    );
    assert!(failed_closed(&create(&gateway_for(&without, "")).await));
    assert_eq!(up.calls().len(), 1, "no call without a verified name");
    let text = logs.text();
    assert!(text.contains("upstream failed: rejecting"), "{text}");
    assert!(text.contains("certificate"), "the log says why: {text}");
}

#[tokio::test]
async fn mtls_presents_the_client_certificate_and_without_one_the_failure_policy_answers() {
    let (server_ca, client_ca) = (ca("upstream CA"), ca("gateway clients CA"));
    let up = tls_upstream(&server_ca, Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &server_ca.pem);
    let (cert, key) = leaf(&client_ca, &[]);
    let cert_file = write(dir.path(), "client.pem", &cert);
    let key_file = write(dir.path(), "client.key", &key);

    let with_cert = format!(
        "{{endpoints: ['https://{}'], tls: {{ca_file: '{}', cert_file: '{}', key_file: '{}', server_name: hooks.internal}}}}",
        up.addr,
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    );
    assert_eq!(create(&gateway_for(&with_cert, "")).await.json, allow());
    assert_eq!(up.calls().len(), 1);

    let (logs, _guard) = Logs::capture();
    let without_cert = format!(
        "{{endpoints: ['https://{}'], tls: {{ca_file: '{}', server_name: hooks.internal}}}}",
        up.addr,
        ca_file.display()
    );
    let a = create(&gateway_for(&without_cert, "")).await;
    assert_eq!(
        a.json,
        rejection(20500, "callback service unavailable", "unreachable"),
        "fail closed"
    );
    assert_eq!(up.calls().len(), 1, "the upstream refused the call");
    let text = logs.text();
    assert!(
        text.contains("upstream failed: rejecting") && text.contains(CREATE),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_ca_is_refused_by_the_failure_policy() {
    let (server_ca, other_ca) = (ca("upstream CA"), ca("some other CA"));
    let up = tls_upstream(&server_ca, None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &other_ca.pem);
    let (logs, _guard) = Logs::capture();
    let upstream = format!(
        "{{endpoints: ['https://{}'], tls: {{ca_file: '{}', server_name: hooks.internal}}}}",
        up.addr,
        ca_file.display()
    );
    assert!(failed_closed(&create(&gateway_for(&upstream, "")).await));
    assert!(up.calls().is_empty());
    let text = logs.text();
    assert!(
        text.contains("upstream failed: rejecting") && text.contains("UnknownIssuer"),
        "{text}"
    );
}

/// cert-manager rewrites the files in place: a CA file that did not match is rewritten with the
/// right CA and new connections use it; a file that then turns bad keeps the good settings (a
/// new connection still verifies), with a warning and the error counter.
#[tokio::test]
async fn a_rewritten_ca_file_is_used_by_new_connections_and_a_bad_one_keeps_the_old() {
    let (server_ca, other_ca) = (ca("upstream CA"), ca("some other CA"));
    let up = tls_upstream(&server_ca, None).await;
    // A proxy in front, to cut the connections and so force new ones.
    let proxy = Proxy::start(up.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", &other_ca.pem);
    let (logs, _guard) = Logs::capture();
    let upstream = format!(
        "{{endpoints: ['https://{}'], resolve_interval: 200ms, tls: {{ca_file: '{}', server_name: hooks.internal}}}}",
        proxy.addr,
        ca_file.display()
    );
    let gw = gateway_for(&upstream, "");
    assert!(failed_closed(&create(&gw).await), "the wrong CA first");

    // Two CAs in one file, the right one second.
    write(
        dir.path(),
        "ca.pem",
        &format!("{}{}", other_ca.pem, server_ca.pem),
    );
    eventually(
        "calls to succeed with the rewritten CA file",
        PATIENCE,
        async || create(&gw).await.json == allow(),
    )
    .await;
    assert!(!up.calls().is_empty());
    let metrics = gw.metrics().expect("recorder").render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_upstream_tls_reloads_total")
                && l.contains("result=\"ok\"")),
        "{metrics}"
    );

    write(
        dir.path(),
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    eventually("the bad file to be reported", PATIENCE, async || {
        logs.text().contains("keeping the previous TLS settings")
    })
    .await;
    // Every connection cut: a call that succeeds now made a new one, with the kept CA. (A call
    // sent before the gateway saw the cut may fail, as on any dropped connection.)
    proxy.cut();
    eventually("a new connection with the kept CA", PATIENCE, async || {
        create(&gw).await.json == allow()
    })
    .await;
    let metrics = gw.metrics().expect("recorder").render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gateway_upstream_tls_reloads_total")
                && l.contains("result=\"error\"")),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy that can cut its connections (cert rotation) or die (kill under load).

struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    async fn start_on(addr: SocketAddr, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                c.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Closes every open connection; new ones are accepted.
    fn cut(&self) {
        self.conns.lock().unwrap().abort_all();
    }

    /// Closes every connection and the listener: new connections are refused.
    fn kill(&self) {
        self.accept.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------------
// A DNS server for `hooks.test.` on 127.0.0.1 (UDP), answering as the test says.

#[derive(Clone, Debug)]
enum Answer4 {
    Addrs(Vec<Ipv4Addr>),
    ServFail,
}

struct Dns {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer4>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    async fn start(addrs: &[Ipv4Addr]) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer4::Addrs(addrs.to_vec())));
        let queries = Arc::new(AtomicUsize::new(0));
        let (a, q) = (answer.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = Self::reply(&query, &a.lock().unwrap().clone());
                let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
            }
        });
        Self {
            addr,
            answer,
            queries,
            task,
        }
    }

    fn reply(query: &Message, answer: &Answer4) -> Message {
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(query.queries.clone());
        let Some(q) = query.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply;
        };
        if !q.name().to_ascii().eq_ignore_ascii_case("hooks.test.") {
            reply.metadata.response_code = ResponseCode::NXDomain;
            return reply;
        }
        match answer {
            Answer4::ServFail => reply.metadata.response_code = ResponseCode::ServFail,
            Answer4::Addrs(addrs) => {
                if q.query_type() == RecordType::A {
                    for ip in addrs {
                        // TTL 0: nothing may keep an old answer.
                        reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(*ip))));
                    }
                }
            }
        }
        reply
    }

    fn answer(&self, answer: Answer4) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// Two upstreams on the same port, one on 127.0.0.1 and one on 127.0.0.2.
async fn twin_upstreams() -> (Upstream, Upstream, u16) {
    let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let second = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .expect("127.0.0.2 is loopback on Linux");
    (
        Upstream::start_on(first).await,
        Upstream::start_on(second).await,
        port,
    )
}

fn dns_yaml(dns: &Dns) -> String {
    format!("dns: {{nameservers: ['{}']}}", dns.addr)
}

const LOCAL_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LOCAL_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

// ---------------------------------------------------------------------------------------------
// Resolution and balancing.

#[tokio::test]
async fn the_addresses_of_one_name_share_the_calls_and_keep_the_name_as_authority() {
    let (a, b, port) = twin_upstreams().await;
    let dns = Dns::start(&[LOCAL_A, LOCAL_B]).await;
    let gw = gateway_for(
        &format!("{{endpoints: ['http://hooks.test:{port}'], resolve_interval: 200ms}}"),
        &dns_yaml(&dns),
    );
    for _ in 0..40 {
        assert_eq!(create(&gw).await.json, allow());
    }
    let (na, nb) = (a.calls().len(), b.calls().len());
    assert_eq!(na + nb, 40);
    assert!(na > 0 && nb > 0, "both addresses get calls: {na} / {nb}");
    for call in a.calls().iter().chain(b.calls().iter()) {
        assert_eq!(call.authority, format!("hooks.test:{port}"));
    }
    assert!(dns.queries.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn a_dns_change_is_followed_and_a_failing_resolution_keeps_the_last_addresses() {
    let (a, b, port) = twin_upstreams().await;
    let dns = Dns::start(&[LOCAL_A]).await;
    let (logs, _guard) = Logs::capture();
    let gw = gateway_for(
        &format!("{{endpoints: ['http://hooks.test:{port}'], resolve_interval: 200ms}}"),
        &dns_yaml(&dns),
    );
    for _ in 0..5 {
        assert_eq!(create(&gw).await.json, allow());
    }
    assert_eq!((a.calls().len(), b.calls().len()), (5, 0), "calls reach A");

    dns.answer(Answer4::Addrs(vec![LOCAL_B]));
    eventually("a call to reach B", PATIENCE, async || {
        assert_eq!(create(&gw).await.json, allow());
        !b.calls().is_empty()
    })
    .await;
    let at_a = a.calls().len();
    for _ in 0..10 {
        assert_eq!(create(&gw).await.json, allow());
    }
    assert_eq!(a.calls().len(), at_a, "A gets no new calls");
    assert!(b.calls().len() >= 10);

    dns.answer(Answer4::ServFail);
    eventually("the failed resolution to be logged", PATIENCE, async || {
        logs.text().contains("cannot resolve an upstream host")
    })
    .await;
    let at_b = b.calls().len();
    for _ in 0..10 {
        assert_eq!(create(&gw).await.json, allow());
    }
    assert_eq!(
        b.calls().len(),
        at_b + 10,
        "the last known address keeps serving"
    );
    assert_eq!(a.calls().len(), at_a);
    assert!(
        b.calls()
            .iter()
            .all(|c| c.authority == format!("hooks.test:{port}"))
    );
}

#[tokio::test]
async fn without_re_resolution_the_connector_resolves_the_name() {
    let up = Upstream::start().await;
    let port = up.addr.port();
    let gw = gateway_for(
        &format!("{{endpoints: ['http://localhost:{port}'], resolve_interval: 0s}}"),
        "",
    );
    assert_eq!(create(&gw).await.json, allow());
    assert_eq!(up.only_call().authority, format!("localhost:{port}"));
}

#[tokio::test]
async fn a_name_that_never_resolves_blocks_nothing_and_answers_by_the_failure_policy() {
    // A DNS server that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['http://hooks.test:1']}}}}\n\
         defaults: {{delivery: sync, timeout: 300ms, on_failure: reject, reject_code: 20500}}\n\
         dns: {{nameservers: ['{}']}}",
        silent.local_addr().unwrap()
    );
    let gw = gateway(&Config::from_yaml(&yaml).unwrap());
    assert!(failed_closed(&create(&gw).await));
}

#[tokio::test]
async fn an_upstream_killed_under_load_leaves_every_request_answered_and_the_other_serving() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = Proxy::start(a.addr).await;
    let (logs, _guard) = Logs::capture();
    let gw = gateway_for(
        &format!("{{endpoints: ['http://{}', '{}']}}", proxy.addr, b.uri()),
        "",
    );
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let gw = gw.clone();
        load.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..50 {
                answers.push(create(&gw).await);
            }
            answers
        });
    }
    eventually("A to serve some of the load", PATIENCE, async || {
        a.calls().len() >= 5
    })
    .await;
    proxy.kill();
    let mut answered = 0;
    while let Some(answers) = load.join_next().await {
        for a in answers.unwrap() {
            assert!(a.json == allow() || failed_closed(&a), "{:?}", a.json);
            answered += 1;
        }
    }
    assert_eq!(answered, 200, "every request answered");

    eventually("A to be taken out of the rotation", PATIENCE, async || {
        create(&gw).await;
        logs.text().contains("refused a connection")
    })
    .await;
    let (at_a, at_b) = (a.calls().len(), b.calls().len());
    for _ in 0..20 {
        assert_eq!(create(&gw).await.json, allow(), "B serves every call");
    }
    assert_eq!((a.calls().len(), b.calls().len()), (at_a, at_b + 20));

    // A comes back on its address: the probe puts it back into the rotation.
    let _revived = Proxy::start_on(proxy.addr, a.addr).await;
    eventually("A to get calls again", PATIENCE, async || {
        assert_eq!(create(&gw).await.json, allow());
        a.calls().len() > at_a
    })
    .await;
    assert!(logs.text().contains("back in the rotation"));
}

// ---------------------------------------------------------------------------------------------
// The resolver and the discovery task on their own.

#[tokio::test]
async fn the_dns_resolver_asks_the_configured_server() {
    let dns = Dns::start(&[LOCAL_A, LOCAL_B]).await;
    let resolver = DnsResolver::new(&[dns.addr]).unwrap();
    let mut addrs = resolver.resolve("hooks.test", 5).await.unwrap();
    addrs.sort();
    assert_eq!(
        addrs,
        vec![
            SocketAddr::from((LOCAL_A, 5)),
            SocketAddr::from((LOCAL_B, 5))
        ]
    );
    assert!(dns.queries.load(Ordering::SeqCst) > 0);
    assert_eq!(
        resolver.resolve("elsewhere.test", 5).await.unwrap(),
        Vec::new(),
        "NXDOMAIN is no address"
    );
    dns.answer(Answer4::ServFail);
    let err = resolver.resolve("hooks.test", 5).await.unwrap_err();
    assert!(err.to_string().contains("hooks.test"), "{err}");

    let local = SystemResolver.resolve("localhost", 7).await.unwrap();
    assert!(local.contains(&SocketAddr::from((LOCAL_A, 7))), "{local:?}");
}

/// A resolver that counts its lookups and answers 127.0.0.1.
struct Counting(AtomicUsize);

impl Resolve for Counting {
    fn resolve(
        &self,
        _host: &str,
        port: u16,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<SocketAddr>, ResolveError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(vec![SocketAddr::from((
            LOCAL_A, port,
        ))])))
    }
}

#[tokio::test]
async fn the_discovery_task_ends_with_the_last_client() {
    let config = Config::from_yaml(
        "upstreams: {default: {endpoints: ['http://hooks.test:1'], resolve_interval: 20ms}}",
    )
    .unwrap();
    let resolver = Arc::new(Counting(AtomicUsize::new(0)));
    let upstreams = Upstreams::build_with_resolver(&config.upstreams, resolver.clone()).unwrap();
    let client = upstreams.get("default").cloned().unwrap();
    drop(upstreams);
    eventually("re-resolution every interval", PATIENCE, async || {
        resolver.0.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(
        Arc::strong_count(&resolver) > 1,
        "the task holds the resolver"
    );
    drop(client);
    eventually(
        "the task to end and release the resolver",
        PATIENCE,
        async || Arc::strong_count(&resolver) == 1,
    )
    .await;
}

/// Runs a gateway on `cfg`, opens `conns` keep-alive connections to it together, posts `rounds`
/// BeforeCreateGroup callbacks on each in turn, checks that every one was allowed, and stops the
/// gateway cleanly.
async fn serve_and_post(cfg: Config, conns: usize, rounds: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(openim_callback_gateway::run(cfg, listener, async {
        let _ = stopped.await;
    }));
    let body = payload(CREATE);
    let answers = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<_> = (0..conns).map(|_| process::connect(&addr)).collect();
        let mut answers = Vec::new();
        for _ in 0..rounds {
            for conn in &mut conns {
                answers.push(process::post(
                    conn,
                    &format!("/callbackExample/{CREATE}"),
                    &body,
                ));
            }
        }
        answers
    })
    .await
    .unwrap();
    assert_eq!(answers.len(), conns * rounds);
    for (status, json) in &answers {
        assert_eq!((*status, json), (200, &allow()));
    }
    let _ = stop.send(());
    gateway
        .await
        .expect("the gateway task")
        .expect("a clean stop");
}

/// The distinct TCP peers (upstream connections) `calls` came on.
fn peers(calls: &[Call]) -> std::collections::BTreeSet<SocketAddr> {
    calls.iter().map(|c| c.peer.expect("a TCP peer")).collect()
}

/// The callback port's serving workers (`workers`, `http/serve.rs`) share out OpenIM's
/// keep-alive connections (each new one goes to the worker with the fewest), and each worker
/// calls a plaintext member on an HTTP/2 connection of its own (`upstream/fast.rs`).
#[tokio::test]
async fn serving_workers_share_the_connections_and_each_calls_on_its_own() {
    let up = Upstream::start().await;
    // Four connections open together, then two callbacks on each, in turn.
    serve_and_post(config(&up.uri(), "workers: 2\nshutdown_delay: 0s\n"), 4, 2).await;
    let calls = up.calls();
    assert_eq!(calls.len(), 8, "every callback reached the upstream");
    let peers = peers(&calls);
    assert_eq!(
        peers.len(),
        2,
        "one upstream connection per serving worker, both workers serving: {peers:?}"
    );
}

/// With several members, each serving worker picks one per call (power of two choices, past the
/// balancer's task) and calls it on its own HTTP/2 connection: two workers and two members make
/// four upstream connections, and both members get calls.
#[tokio::test]
async fn serving_workers_pick_among_several_members_each_on_its_own_connections() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cfg = Config::from_yaml(&format!(
        "upstreams: {{default: {{endpoints: ['{}', '{}'], connect_timeout: 500ms}}}}\n\
         defaults: {{delivery: sync, timeout: 2s}}\nworkers: 2\nshutdown_delay: 0s\n",
        a.uri(),
        b.uri()
    ))
    .expect("test config is valid");
    // Four connections, two per worker, then eight callbacks on each, in turn: sixteen per
    // worker, so that each worker picks each member (a miss has odds of 2^-16).
    serve_and_post(cfg, 4, 8).await;
    let (ca, cb) = (a.calls(), b.calls());
    assert_eq!(ca.len() + cb.len(), 32, "every callback reached a member");
    let (pa, pb) = (peers(&ca), peers(&cb));
    assert_eq!(
        (pa.len(), pb.len()),
        (2, 2),
        "each member is called on one connection per serving worker: {pa:?} / {pb:?}"
    );
}
