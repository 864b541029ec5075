//! Logs and traces: W3C trace context from the request (or a new trace) to the upstream as gRPC
//! metadata, spooled deliveries continuing the callback's trace, the one log line per callback
//! with user content redacted, and the OTLP exporter against a receiver the test starts.
//!
//! Propagation runs in-process (the global subscriber with the OpenTelemetry layer, no exporter);
//! logs and the exporter run the real binary.

use crate::support::process;
use crate::support::*;
use openim_callback_gateway::config::{Config, LogConfig};
use openim_callback_gateway::gateway::Gateway;
use openim_callback_gateway::spool::Spool;
use prost::Message as _;
use serde_json::Value as Json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEND: &str = "callbackBeforeSendSingleMsgCommand";
const QUIT: &str = "callbackAfterQuitGroupCommand";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn incoming() -> String {
    format!("00-{TRACE}-{PARENT}-01")
}

/// The global subscriber with the OpenTelemetry layer (no exporter), once per test process. No
/// log lines: the spans exist whatever the filter says, and every test of the crate shares it.
fn traced() {
    openim_callback_gateway::telemetry::init_logging(&LogConfig {
        filter: "off".into(),
        ..LogConfig::default()
    });
}

/// `(version, trace id, parent span id, flags)` of a `traceparent`, checked for the W3C shape.
fn parts(traceparent: &str) -> (String, String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };
    assert!(
        hex(p[0], 2) && hex(p[1], 32) && hex(p[2], 16) && hex(p[3], 2),
        "{traceparent}"
    );
    assert_ne!(p[1], "0".repeat(32), "{traceparent}");
    assert_ne!(p[2], "0".repeat(16), "{traceparent}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

fn traceparent_of(call: &Call) -> String {
    call.meta("traceparent")
        .unwrap_or_else(|| panic!("the upstream got a traceparent: {:?}", call.metadata))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_call_carries_the_callbacks_trace_context() {
    traced();
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), ""));

    // No trace context in the request: the callback starts a trace.
    assert_envelope(&post_command(&gw, SEND, payload(SEND)).await);
    // With one: the callback's span is its child, and the upstream sees that span as parent.
    let a = post(
        &gw,
        &format!("/callbackExample/{SEND}"),
        &[
            ("operationID", "op-1"),
            ("traceparent", &incoming()),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        payload(SEND),
    )
    .await;
    assert_envelope(&a);
    // Another untraced callback: a trace of its own.
    assert_envelope(&post_command(&gw, SEND, payload(SEND)).await);

    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    let (v, new_trace, new_parent, flags) = parts(&traceparent_of(&calls[0]));
    assert_eq!(
        (v.as_str(), flags.as_str()),
        ("00", "01"),
        "a new trace is sampled"
    );
    assert_ne!(new_trace, TRACE);
    assert_eq!(calls[0].meta("tracestate"), None);

    let (_, trace, parent, flags) = parts(&traceparent_of(&calls[1]));
    assert_eq!(trace, TRACE, "the incoming trace id goes on");
    assert_ne!(
        parent, PARENT,
        "the parent is the gateway's span, not the caller's"
    );
    assert_eq!(flags, "01", "the caller's sampling decision goes on");
    assert_eq!(
        calls[1].meta("tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    let (_, other_trace, other_parent, _) = parts(&traceparent_of(&calls[2]));
    assert_ne!(other_trace, new_trace, "one trace per callback");
    assert_ne!(other_parent, new_parent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_caller_stays_unsampled_and_a_malformed_one_starts_a_trace() {
    traced();
    let up = Upstream::start().await;
    let gw = gateway(&config(&up.uri(), ""));
    for tp in [
        format!("00-{TRACE}-{PARENT}-00"),
        "00-xyz-123-01".to_owned(),
    ] {
        let a = post(
            &gw,
            &format!("/callbackExample/{SEND}"),
            &[("traceparent", &tp)],
            payload(SEND),
        )
        .await;
        assert_envelope(&a);
    }
    let calls = up.calls();
    let (_, trace, _, flags) = parts(&traceparent_of(&calls[0]));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    let (_, trace, _, _) = parts(&traceparent_of(&calls[1]));
    assert_ne!(trace, TRACE);
}

/// A gateway with a real spool in `dir` delivering to `upstream_uri` with short backoffs.
fn spooled(upstream_uri: &str, dir: &Path) -> (Gateway, Spool, tokio::task::JoinHandle<()>) {
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{upstream_uri}'], connect_timeout: 200ms}}}}\n\
         defaults: {{timeout: 1s}}\n\
         spool: {{dir: '{}', backoff_initial: 20ms, backoff_max: 100ms}}\n",
        dir.display()
    );
    let config = Config::from_yaml(&yaml).expect("valid config");
    let spool = Spool::open(&config.spool).expect("spool opens");
    let gw = Gateway::new(&config, Some(spool.clone())).expect("gateway");
    let delivery = spool.start(Arc::new(gw.clone()));
    (gw, spool, delivery)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_deliveries_continue_the_callbacks_trace_across_retries() {
    traced();
    let up = Upstream::start().await;
    up.on(
        "AfterQuitGroup",
        Behavior::Status(
            tonic::Code::Unavailable,
            "not yet".into(),
            Default::default(),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (gw, spool, delivery) = spooled(&up.uri(), dir.path());

    let a = post(
        &gw,
        &format!("/callbackExample/{QUIT}"),
        &[("operationID", "op-q"), ("traceparent", &incoming())],
        payload(QUIT),
    )
    .await;
    assert_eq!(a.json, allow(), "acknowledged once spooled");
    let first = up.wait_calls(1, Duration::from_secs(20)).await;
    assert!(!first.is_empty(), "the first attempt arrives");
    up.on("AfterQuitGroup", Behavior::Reply(bytes::Bytes::new()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while spool.stats().pending > 0 {
        assert!(Instant::now() < deadline, "delivered after the retry");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = up.calls();
    assert!(calls.len() >= 2, "a failed attempt, then a delivered one");
    let mut parents = Vec::new();
    for call in &calls {
        let (_, trace, parent, flags) = parts(&traceparent_of(call));
        assert_eq!(trace, TRACE, "every attempt is in the callback's trace");
        assert_eq!(flags, "01");
        assert_ne!(parent, PARENT);
        parents.push(parent);
    }
    parents.dedup();
    assert_eq!(parents.len(), calls.len(), "one span per attempt");
    assert_eq!(
        calls[0].meta("openim-delivery-id"),
        calls[1].meta("openim-delivery-id")
    );

    // Without an incoming context the callback's new trace is the one the delivery continues.
    up.on("AfterQuitGroup", Behavior::Reply(bytes::Bytes::new()));
    let a = post_command(&gw, QUIT, payload(QUIT)).await;
    assert_eq!(a.json, allow());
    let calls = up
        .wait_calls(calls.len() + 1, Duration::from_secs(20))
        .await;
    let (_, trace, _, _) = parts(&traceparent_of(calls.last().unwrap()));
    assert_ne!(trace, TRACE);
    delivery.abort();
}

// ---- the binary: log lines and the exporter ----

/// Starts the binary on `yaml` in `dir`.
fn start(dir: &Path, yaml: &str) -> process::Gateway {
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    process::spawn(
        &["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        &dir.join("spool"),
    )
}

/// A message that carries `word` in its content.
fn message_with(word: &str) -> Vec<u8> {
    let mut body = read_json(&format!("payloads/{SEND}.json"));
    body["content"] = Json::String(format!("{{\"content\":\"hello bob, {word}\"}}"));
    wire(&body)
}

fn send(addr: &str, body: &[u8], headers: &[(&str, &str)]) -> process::Reply {
    let mut conn = process::connect(addr);
    process::request(
        &mut conn,
        "POST",
        &format!("/callbackExample/{SEND}"),
        headers,
        body,
    )
    .unwrap()
}

/// Waits (bounded) until the log has `n` lines with an `outcome=` field; returns them.
fn callback_lines(gw: &process::Gateway, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines: Vec<String> = gw
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("outcome=") || l.contains("\"outcome\":"))
            .cloned()
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An upstream that rejects a message by echoing its content (as services do), answers
/// UNAVAILABLE echoing it for another, and a body with a bad value that the problem quotes.
async fn content_upstream() -> Upstream {
    let up = Upstream::start().await;
    up.on(
        "BeforeSendSingleMsg",
        Behavior::Status(
            tonic::Code::PermissionDenied,
            "blocked: hello bob, zebra-7731".into(),
            Default::default(),
        ),
    );
    up.on(
        "AfterQuitGroup",
        Behavior::Status(
            tonic::Code::Unavailable,
            "cannot notify about zebra-7731".into(),
            Default::default(),
        ),
    );
    up
}

/// The config of the redaction test: before calls synchronous, the quit event spooled.
fn content_config(up: &Upstream, extra: &str) -> String {
    format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n\
         commands: {{{QUIT}: {{delivery: spool}}}}\n\
         spool: {{backoff_initial: 20ms, backoff_max: 100ms}}\n{extra}",
        up.uri()
    )
}

/// Four callbacks that would put user content into the log: a rejection echoing the message,
/// a bad value quoted by the decoder, an upstream error status echoing the message, and a
/// spooled event whose delivery fails with a status echoing it.
fn callbacks_with_content(gw: &process::Gateway, up: &Upstream) -> Vec<String> {
    let r = send(
        &gw.addr,
        &message_with("zebra-7731"),
        &[("operationID", "op-a")],
    );
    assert_eq!(r.json()["errCode"], 20001, "rejected: {:?}", r.json());
    let mut bad = read_json(&format!("payloads/{SEND}.json"));
    bad["sendTime"] = Json::String("zebra-7731".into());
    let r = send(&gw.addr, &wire(&bad), &[("operationID", "op-b")]);
    assert_eq!(r.status, 200);
    up.on(
        "BeforeSendSingleMsg",
        Behavior::Status(
            tonic::Code::Internal,
            "cannot store hello bob, zebra-7731".into(),
            Default::default(),
        ),
    );
    let r = send(
        &gw.addr,
        &message_with("zebra-7731"),
        &[("operationID", "op-c")],
    );
    assert_eq!(r.status, 200);
    // A spooled after-event whose delivery fails with a status echoing what the user wrote.
    let mut conn = process::connect(&gw.addr);
    let r = process::request(
        &mut conn,
        "POST",
        &format!("/callbackExample/{QUIT}"),
        &[("operationID", "op-d")],
        &payload(QUIT),
    )
    .unwrap();
    assert_eq!(r.json(), allow());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.log_text().contains("will retry") {
        assert!(Instant::now() < deadline, "a failed delivery is logged");
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = callback_lines(gw, 4);
    assert_eq!(lines.len(), 4, "one line per callback: {lines:#?}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_line_of_a_callback_keeps_message_content_out_unless_told() {
    let up = content_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), &content_config(&up, ""));
    let lines = callbacks_with_content(&gw, &up);
    let log = gw.log_text();
    assert!(!log.contains("zebra-7731"), "content is redacted:\n{log}");
    assert!(!log.contains("hello bob"), "content is redacted:\n{log}");
    assert!(!log.contains("Alice"), "the nickname is not logged:\n{log}");
    // What is not user content stays: the ids, the outcome, the code, the field's path.
    assert!(lines[0].contains("outcome=\"rejected\"") || lines[0].contains("outcome=rejected"));
    assert!(lines[0].contains("err_code=20001") && lines[0].contains("<redacted>"));
    assert!(
        lines[0].contains("grpc_status=\"PERMISSION_DENIED\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("sendTime"),
        "the bad field's path: {}",
        lines[1]
    );
    assert!(lines[1].contains("failure=\"bad_input\""), "{}", lines[1]);
    assert!(
        lines[2].contains("grpc_status=\"INTERNAL\""),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("upstream status INTERNAL"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains("outcome=\"spooled\""), "{}", lines[3]);
    let retry = log.lines().find(|l| l.contains("will retry")).unwrap();
    assert!(retry.contains("Unavailable: <redacted>"), "{retry}");
    for l in &lines {
        assert!(l.contains("operation_id=\"op-"), "{l}");
        assert!(l.contains("trace_id="), "{l}");
    }
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let up = content_upstream().await;
    let gw = start(dir.path(), &content_config(&up, "log: {redact: false}\n"));
    let lines = callbacks_with_content(&gw, &up);
    for (i, l) in lines[..3].iter().enumerate() {
        assert!(
            l.contains("zebra-7731"),
            "log.redact: false shows it ({i}): {l}"
        );
    }
    let log = gw.log_text();
    let retry = log.lines().find(|l| l.contains("will retry")).unwrap();
    assert!(retry.contains("cannot notify about zebra-7731"), "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_are_flat_objects_with_the_callback_fields() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n\
         log: {{format: json}}\n",
        up.uri()
    );
    let gw = start(dir.path(), &yaml);
    let r = send(
        &gw.addr,
        &message_with("zebra-7731"),
        &[("operationID", "op-j"), ("traceparent", &incoming())],
    );
    assert_eq!(r.json(), allow());
    let lines = callback_lines(&gw, 1);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line: Json = serde_json::from_str(&lines[0]).expect("one JSON object per line");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["command"], SEND);
    assert_eq!(line["operation_id"], "op-j");
    assert_eq!(line["upstream"], "default");
    assert_eq!(line["outcome"], "continue");
    assert_eq!(line["grpc_status"], "OK");
    assert_eq!(line["trace_id"], TRACE);
    assert!(
        line["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{line}"
    );
    assert!(
        line.get("span").is_none() && line.get("spans").is_none(),
        "{line}"
    );
    assert!(!lines[0].contains("zebra-7731"));
}

/// The log's writer thread loses nothing: every callback's line arrives, in the order the
/// callbacks were answered, the last one included when SIGTERM follows right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_arrives_in_order_and_the_last_ones_at_sigterm() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n",
        up.uri()
    );
    let mut gw = start(dir.path(), &yaml);
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("op-{i:04}")).collect();
    let mut conn = process::connect(&gw.addr);
    for id in &ids {
        let r = process::request(
            &mut conn,
            "POST",
            &format!("/callbackExample/{SEND}"),
            &[("operationID", id)],
            &payload(SEND),
        )
        .unwrap();
        assert_eq!(r.json(), allow());
    }
    // At once: the last lines are still queued for the writer thread.
    let pid = gw.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the gateway exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The process has exited; its stdout is read to the end by the test's reader thread.
    let lines = callback_lines(&gw, n);
    let logged: Vec<String> = lines
        .iter()
        .map(|l| {
            let start = l.find("operation_id=\"").expect("an operation_id") + 14;
            l[start..start + 7].to_owned()
        })
        .collect();
    assert_eq!(logged, ids, "every line, in order");
}

/// Spans an OTLP/HTTP receiver got: `(resource attributes, span)`.
type Received = Arc<
    Mutex<
        Vec<(
            Vec<(String, String)>,
            opentelemetry_proto::tonic::trace::v1::Span,
        )>,
    >,
>;

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn collect(
    req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
    sink: &Received,
) {
    for rs in req.resource_spans {
        let resource: Vec<(String, String)> = rs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
            .into_iter()
            .map(|kv| (kv.key, text(&kv.value)))
            .collect();
        for ss in rs.scope_spans {
            for span in ss.spans {
                sink.lock().unwrap().push((resource.clone(), span));
            }
        }
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`.
async fn http_receiver() -> (std::net::SocketAddr, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                collect(
                    ExportTraceServiceRequest::decode(body).expect("OTLP protobuf"),
                    &sink,
                );
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, got)
}

/// An OTLP/gRPC receiver on 127.0.0.1:0 (`opentelemetry.proto.collector.trace.v1.TraceService`).
async fn grpc_receiver() -> (std::net::SocketAddr, Received) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    struct Sink(Received);
    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            collect(request.into_inner(), &self.0);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let got: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = TraceServiceServer::new(Sink(got.clone()));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_http_exporter_sends_the_callback_span_and_flushes_on_sigterm() {
    let (otlp, got) = http_receiver().await;
    exports_the_callback_span(otlp, "http", got).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_grpc_exporter_sends_the_callback_span_and_flushes_on_sigterm() {
    let (otlp, got) = grpc_receiver().await;
    exports_the_callback_span(otlp, "grpc", got).await;
}

/// One callback with an incoming trace context, SIGTERM, then the receiver has its span.
async fn exports_the_callback_span(otlp: std::net::SocketAddr, protocol: &str, got: Received) {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "upstreams: {{default: {{endpoints: ['{}']}}}}\ndefaults: {{delivery: sync}}\n\
         tracing: {{service_name: gw-under-test, otlp: {{endpoint: 'http://{otlp}', protocol: {protocol}}}}}\n",
        up.uri()
    );
    let mut gw = start(dir.path(), &yaml);
    let r = send(
        &gw.addr,
        &payload(SEND),
        &[("operationID", "op-x"), ("traceparent", &incoming())],
    );
    assert_eq!(r.json(), allow());
    // The upstream's parent is the exported span.
    let upstream_parent = parts(&traceparent_of(&up.only_call())).2;

    // SIGTERM: the batch (5 s delay) is flushed before the process exits.
    let pid = gw.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if gw.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans = got.lock().unwrap().clone();
    let (resource, span) = spans
        .iter()
        .find(|(_, s)| s.name == "callback")
        .unwrap_or_else(|| panic!("a callback span was exported: {spans:#?}"));
    assert!(
        resource.contains(&("service.name".into(), "gw-under-test".into())),
        "{resource:?}"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&span.trace_id), TRACE, "the incoming trace");
    assert_eq!(
        hex(&span.parent_span_id),
        PARENT,
        "a child of the caller's span"
    );
    assert_eq!(
        hex(&span.span_id),
        upstream_parent,
        "the span the upstream saw"
    );
    let attrs: Vec<(String, String)> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect();
    for (k, v) in [
        ("command", SEND),
        ("operation_id", "op-x"),
        ("outcome", "continue"),
        ("grpc_status", "OK"),
    ] {
        assert!(
            attrs.contains(&(k.into(), v.into())),
            "{k}={v} in {attrs:?}"
        );
    }
}
