//! The metrics contract: every metric the code records is in `stats::METRICS` (name, kind,
//! help); a scrape shows `# HELP` lines, histograms (not summaries) and counters moving; and the
//! Grafana dashboard queries only names the gateway exports.

use crate::support::*;
use openim_callback_gateway::stats::{Kind, METRICS};
use std::collections::BTreeSet;

const CREATE: &str = "callbackBeforeCreateGroupCommand";

fn exported() -> BTreeSet<&'static str> {
    METRICS.iter().map(|(n, _, _)| *n).collect()
}

/// Every `gateway_*` name in `text` (string literals or PromQL).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("gateway_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| {
            METRICS
                .iter()
                .any(|(n, k, _)| n == b && *k == Kind::Histogram)
        })
        .unwrap_or(name)
}

#[test]
fn every_metric_the_code_records_is_in_the_table() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("stats.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                for part in text.split(macro_).skip(1) {
                    let Some(name) = part
                        .trim_start()
                        .strip_prefix('"')
                        .and_then(|p| p.split('"').next())
                    else {
                        continue;
                    };
                    if !exported().contains(name) {
                        missing.push(format!("{}: {name}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "recorded but not in stats::METRICS: {missing:#?}"
    );
    for (name, _, help) in METRICS {
        assert!(name.starts_with("gateway_") && !help.is_empty());
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_names() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards/grafana/openim-callback-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        out.push(v.as_str().unwrap().to_owned());
                    } else if k == "query"
                        && let Some(q) = v.get("query").and_then(|q| q.as_str())
                    {
                        out.push(q.to_owned());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(
        exprs.len() >= 15,
        "the dashboard has panels with queries: {}",
        exprs.len()
    );
    let mut used = BTreeSet::new();
    for e in &exprs {
        for n in names_in(e) {
            used.insert(base(&n).to_owned());
        }
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|n| !exported().contains(n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries names the gateway does not export: {unknown:?}"
    );
    for must in [
        "gateway_callbacks_total",
        "gateway_callback_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_breaker_state",
        "gateway_spool_pending",
        "gateway_config_reloads_total",
    ] {
        assert!(used.contains(must), "the dashboard shows {must}");
    }
}

/// Through the binary: the `metrics` recorder is process-wide, and the other in-process tests of
/// this crate post the same command meanwhile, so an exact count needs a process of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_shows_help_histograms_and_counters_moving() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\n\
             upstreams: {{default: {{endpoints: ['{}'], connect_timeout: 500ms}}}}\n\
             defaults: {{delivery: sync, timeout: 2s}}\n",
            up.uri()
        ),
    )
    .unwrap();
    let text = tokio::task::spawn_blocking(move || {
        let gw = process::spawn(
            &["--config", cfg.to_str().unwrap()],
            &dir.path().join("spool"),
        );
        let mut conn = process::connect(&gw.addr);
        let mut create = || {
            let (status, _) = process::post(
                &mut conn,
                &format!("/callbackExample/{CREATE}"),
                &payload(CREATE),
            );
            assert_eq!(status, 200);
        };
        let scrape = || {
            let r = process::request(&mut process::connect(&gw.addr), "GET", "/metrics", &[], b"")
                .expect("a scrape");
            assert_eq!(r.status, 200);
            String::from_utf8(r.body).unwrap()
        };
        let count = |text: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("gateway_callbacks_total{")
                        && l.contains(CREATE)
                        && l.contains("outcome=\"continue\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        create();
        let before = count(&scrape());
        create();
        create();
        let text = scrape();
        assert_eq!(count(&text) - before, 2.0, "the counter moved by two");
        text
    })
    .await
    .unwrap();
    for line in [
        "# HELP gateway_callbacks_total ",
        "# TYPE gateway_callbacks_total counter",
        "# TYPE gateway_callback_duration_seconds histogram",
        "# TYPE gateway_upstream_duration_seconds histogram",
        "# HELP gateway_build_info ",
        "gateway_in_flight ",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(text.contains("gateway_callback_duration_seconds_bucket{command=\"callbackBeforeCreateGroupCommand\",le=\"0.001\"}"), "{text}");
    assert!(text.contains("gateway_upstream_calls_total{upstream=\"default\",command=\"callbackBeforeCreateGroupCommand\",grpc_status=\"OK\"}"), "{text}");
    assert!(
        text.contains(&format!(
            "gateway_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(!text.contains("quantile="), "histograms, not summaries");
}
