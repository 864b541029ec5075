//! The in-process harness: a real tonic upstream on 127.0.0.1:0 that records every call and
//! answers as each test scripts it, the gateway as a router (no socket), and the real payloads.
//! The benches include this file with `#[path]`.

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use openim_callback_gateway::config::Config;
use openim_callback_gateway::gateway::Gateway;
use openim_callback_gateway::upstream::RawCodec;
use prost_reflect::DynamicMessage;
use serde_json::Value as Json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;
use tower::ServiceExt as _;

/// What the upstream does for one RPC.
#[derive(Clone, Debug)]
pub(crate) enum Behavior {
    /// Answer OK with this encoded message (empty bytes = the empty message).
    Reply(Bytes),
    /// Answer with a status, optionally with details.
    Status(tonic::Code, String, Bytes),
    /// Wait, then behave.
    Delay(Duration, Box<Behavior>),
    /// Answer OK with bytes that are not a valid message of the reply type.
    Garbage,
}

/// One call the upstream received.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    /// The RPC name (`BeforeCreateGroup`).
    pub(crate) rpc: String,
    /// The gRPC path.
    pub(crate) path: String,
    /// The request's `:authority` (the name the gateway addressed, not the socket address).
    pub(crate) authority: String,
    /// Request metadata.
    pub(crate) metadata: MetadataMap,
    /// The encoded request.
    pub(crate) body: Bytes,
    /// The gateway's end of the connection the call came on.
    pub(crate) peer: Option<SocketAddr>,
}

impl Call {
    /// Decodes the request as a generated type.
    pub(crate) fn decode<T: prost::Message + Default>(&self) -> T {
        T::decode(self.body.clone()).expect("request decodes as the generated type")
    }

    /// Decodes the request by descriptor.
    pub(crate) fn dynamic(&self) -> DynamicMessage {
        let pool = openim_callback_gateway::proto::pool().expect("pool");
        let (service, rpc) = self
            .path
            .trim_start_matches('/')
            .split_once('/')
            .expect("path");
        let method = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == rpc))
            .expect("method in contract");
        DynamicMessage::decode(method.input(), self.body.clone()).expect("request decodes")
    }

    /// A metadata value as text.
    pub(crate) fn meta(&self, key: &str) -> Option<String> {
        self.metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    health_checks: usize,
    behaviors: HashMap<String, Behavior>,
}

/// A real gRPC server implementing every RPC of the contract generically.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

struct Handler {
    state: Arc<Mutex<State>>,
    path: String,
    authority: String,
    peer: Option<SocketAddr>,
}

impl tonic::server::UnaryService<Bytes> for Handler {
    type Response = Bytes;
    type Future =
        futures_util::future::BoxFuture<'static, Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let state = self.state.clone();
        let path = self.path.clone();
        let authority = self.authority.clone();
        let peer = self.peer;
        Box::pin(async move {
            let rpc = path.rsplit('/').next().unwrap_or_default().to_owned();
            let (metadata, _, body) = request.into_parts();
            let health = path.starts_with("/grpc.health.v1.Health/");
            let behavior = {
                let mut s = state.lock().unwrap();
                // The gateway's readiness probes are not calls of the contract.
                if health {
                    s.health_checks += 1;
                } else {
                    s.calls.push(Call {
                        rpc: rpc.clone(),
                        path: path.clone(),
                        authority,
                        metadata,
                        body,
                        peer,
                    });
                }
                s.behaviors.get(&rpc).cloned()
            };
            // Unscripted, the health service is absent, as in a server without it.
            let default = if health {
                Behavior::Status(
                    tonic::Code::Unimplemented,
                    "no health service".into(),
                    Bytes::new(),
                )
            } else {
                Behavior::Reply(Bytes::new())
            };
            let mut behavior = behavior.unwrap_or(default);
            loop {
                match behavior {
                    Behavior::Reply(bytes) => return Ok(tonic::Response::new(bytes)),
                    Behavior::Garbage => {
                        return Ok(tonic::Response::new(Bytes::from_static(&[
                            0xff, 0xff, 0xff,
                        ])));
                    }
                    Behavior::Status(code, message, details) => {
                        return Err(tonic::Status::with_details(code, message, details));
                    }
                    Behavior::Delay(d, next) => {
                        tokio::time::sleep(d).await;
                        behavior = *next;
                    }
                }
            }
        })
    }
}

impl Upstream {
    /// Starts on a fresh loopback port.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(listener).await
    }

    /// Starts on a given listener (to restart on the same address).
    pub(crate) async fn start_on(listener: tokio::net::TcpListener) -> Self {
        Self::start_with(listener, None).await
    }

    /// Starts on a given listener, serving TLS (and requiring a client certificate when `tls`
    /// has a client CA).
    pub(crate) async fn start_tls(
        listener: tokio::net::TcpListener,
        tls: tonic::transport::ServerTlsConfig,
    ) -> Self {
        Self::start_with(listener, Some(tls)).await
    }

    async fn start_with(
        listener: tokio::net::TcpListener,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let svc = tower::service_fn(move |req: http::Request<Body>| {
            let state = s.clone();
            async move {
                let path = req.uri().path().to_owned();
                let authority = req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let peer = req
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(tonic::transport::server::TcpConnectInfo::remote_addr);
                let mut grpc = tonic::server::Grpc::new(RawCodec);
                let handler = Handler {
                    state,
                    path,
                    authority,
                    peer,
                };
                let resp = grpc.unary(handler, req).await;
                Ok::<_, Infallible>(resp.map(Body::new))
            }
        });
        let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(svc));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("server TLS config");
        }
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Self {
            addr,
            state,
            shutdown: Arc::new(shutdown),
        }
    }

    /// `http://127.0.0.1:port`.
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Scripts one RPC.
    pub(crate) fn on(&self, rpc: &str, behavior: Behavior) {
        self.state
            .lock()
            .unwrap()
            .behaviors
            .insert(rpc.to_owned(), behavior);
    }

    /// Scripts one RPC to answer with a generated message.
    pub(crate) fn reply<M: prost::Message>(&self, rpc: &str, message: M) {
        self.on(rpc, Behavior::Reply(message.encode_to_vec().into()));
    }

    /// How many `grpc.health.v1.Health` calls arrived (they are not in [`Upstream::calls`]).
    pub(crate) fn health_checks(&self) -> usize {
        self.state.lock().unwrap().health_checks
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The only call so far; fails when there is not exactly one.
    pub(crate) fn only_call(&self) -> Call {
        let calls = self.calls();
        assert_eq!(
            calls.len(),
            1,
            "expected exactly one upstream call, got {}",
            calls.len()
        );
        calls.into_iter().next().unwrap()
    }

    /// Waits (bounded) until at least `n` calls arrived.
    pub(crate) async fn wait_calls(&self, n: usize, within: Duration) -> Vec<Call> {
        let deadline = Instant::now() + within;
        loop {
            let calls = self.calls();
            if calls.len() >= n || Instant::now() > deadline {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops serving.
    pub(crate) fn stop(&self) {
        // A graceful stop: no new connections, and the open ones get GOAWAY and close once
        // their calls are done (an abort of the accept task alone would leave them serving).
        let _ = self.shutdown.send(true);
    }
}

/// A loopback port that was free a moment ago (for a child process to listen on).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A gateway config for tests: everything goes to `upstream_uri`, after-events synchronously.
pub(crate) fn config(upstream_uri: &str, extra_yaml: &str) -> Config {
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{upstream_uri}'], connect_timeout: 500ms}}}}\n\
         defaults: {{delivery: sync, timeout: 2s}}\n{extra_yaml}"
    );
    Config::from_yaml(&yaml).expect("test config is valid")
}

/// A gateway on a config, with no spool.
pub(crate) fn gateway(config: &Config) -> Gateway {
    Gateway::new(config, None).expect("gateway builds")
}

/// The gateway's metrics as a scrape shows them. The recorder is process-wide: read series of
/// your own (an upstream named after the test), or differences where other tests cannot add.
pub(crate) fn scrape(gw: &Gateway) -> String {
    gw.metrics().expect("recorder installed").render()
}

/// The value of one sample line of `text`, `name{labels} value`, summed over the lines that
/// contain all of `parts`.
pub(crate) fn sample(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the gateway answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) content_type: String,
    pub(crate) raw: Bytes,
    pub(crate) json: Json,
}

/// POSTs a body through the router (no socket).
pub(crate) async fn post(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = http::Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(body.into()))
        .expect("request");
    let resp = openim_callback_gateway::http::app(gw)
        .oneshot(req)
        .await
        .expect("router never fails");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let raw = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&raw).unwrap_or(Json::Null);
    Answer {
        status,
        content_type,
        raw,
        json,
    }
}

/// POSTs a command's body to `/callbackExample/<command>` with the `operationID` header.
pub(crate) async fn post_command(gw: &Gateway, command: &str, body: impl Into<Bytes>) -> Answer {
    post(
        gw,
        &format!("/callbackExample/{command}"),
        &[("operationID", "1719800000123453781")],
        body,
    )
    .await
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A real request body as OpenIM sends it: compact, with Go's trailing newline.
pub(crate) fn payload(command: &str) -> Vec<u8> {
    wire(&read_json(&format!("payloads/{command}.json")))
}

/// A real reply of a before command (`payloads/<command>.response.json`), if there is one.
pub(crate) fn sample_reply(command: &str) -> Option<Json> {
    let path = data_dir().join(format!("payloads/{command}.response.json"));
    path.exists()
        .then(|| read_json(&format!("payloads/{command}.response.json")))
}

/// The request example of a seed page.
pub(crate) fn seed(command: &str) -> Vec<u8> {
    wire(&read_json(&format!("seeds/{command}.json")))
}

/// A file of `tests/data` as JSON.
pub(crate) fn read_json(rel: &str) -> Json {
    let text = std::fs::read(data_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every command that has a payload file.
pub(crate) fn payload_commands() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir().join("payloads"))
        .expect("payloads dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.ends_with(".response.json"))
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// Go's `json.Encoder` output: compact plus a newline.
pub(crate) fn wire(json: &Json) -> Vec<u8> {
    let mut v = serde_json::to_vec(json).expect("json");
    v.push(b'\n');
    v
}

/// The allow envelope with nothing overridden.
pub(crate) fn allow() -> Json {
    serde_json::json!({"actionCode": 0, "errCode": 0, "errMsg": "", "errDlt": "", "nextCode": 0})
}

/// A rejection envelope.
pub(crate) fn rejection(code: i32, msg: &str, detail: &str) -> Json {
    serde_json::json!({"actionCode": 0, "errCode": code, "errMsg": msg, "errDlt": detail, "nextCode": 1})
}

/// Asserts the answer is what OpenIM needs on every path: 200, JSON, five envelope keys with
/// numbers as numbers.
pub(crate) fn assert_envelope(a: &Answer) {
    assert_eq!(a.status, http::StatusCode::OK, "always 200: {a:?}");
    assert!(a.content_type.starts_with("application/json"), "{a:?}");
    let obj = a
        .json
        .as_object()
        .unwrap_or_else(|| panic!("body is a JSON object: {a:?}"));
    for k in ["actionCode", "errCode", "nextCode"] {
        assert!(
            obj.get(k).is_some_and(Json::is_i64),
            "{k} is a JSON integer: {a:?}"
        );
    }
    for k in ["errMsg", "errDlt"] {
        assert!(
            obj.get(k).is_some_and(Json::is_string),
            "{k} is a string: {a:?}"
        );
    }
}
