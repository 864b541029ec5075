//! The upstream health checks: one background task ([`run_checks`]) that checks every member of
//! every upstream of the current snapshot with `grpc.health.v1.Health/Check`, records each
//! member's answer on its transport (NOT_SERVING takes it out of the rotation), closes an open
//! breaker when a check passes, and publishes the results and the readiness to the readiness
//! state (`health::Health`, private to the crate). The why of it is in `health.rs`.

use crate::gateway::Gateway;
use crate::health::{FAST_RECHECK, Target};
use crate::upstream::{BreakerState, CheckResult, MemberChannel};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Checks the upstreams of the current snapshot every `interval` (every [`FAST_RECHECK`] while
/// one is down or its breaker is not closed), and publishes the readiness, until the process
/// ends (the caller aborts the task).
pub async fn run_checks(gw: Gateway, interval: Duration) {
    let health = gw.health();
    let mut was_ready = false;
    let mut was_up: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let snapshot = gw.snapshot();
        let timeout = interval.min(Duration::from_secs(2));
        let mut set = tokio::task::JoinSet::new();
        for target in snapshot.health_targets.clone() {
            set.spawn(async move {
                let result = check_upstream(&target, timeout).await;
                if result.is_ok() {
                    target.upstream.health_ok();
                }
                (target, result)
            });
        }
        let mut results = BTreeMap::new();
        let mut hurry = false;
        while let Some(joined) = set.join_next().await {
            let Ok((target, result)) = joined else {
                continue;
            };
            let up = result.is_ok();
            metrics::gauge!("gateway_upstream_up", "upstream" => target.name.clone()).set(if up {
                1.0
            } else {
                0.0
            });
            match (&result, was_up.insert(target.name.clone(), up)) {
                (Err(e), Some(true) | None) => {
                    tracing::warn!(upstream = %target.name, problem = %e,
                        "upstream down: its commands get their failure policy, after-events stay spooled")
                }
                (Ok(()), Some(false)) => {
                    tracing::info!(upstream = %target.name, "upstream up again")
                }
                _ => {}
            }
            hurry |= !up || target.upstream.breaker_state() != BreakerState::Closed;
            results.insert(target.name, result);
        }
        health.store(snapshot.generation, results);
        health.publish().await;
        let ready = health.readiness().is_ok();
        if ready && !was_ready {
            tracing::info!("ready");
        }
        was_ready = ready;
        drop(snapshot);
        let pause = if hurry {
            interval.min(FAST_RECHECK)
        } else {
            interval
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = health.woken() => {}
        }
    }
}

/// Checks every member of one upstream: up when one answers as serving, else the members'
/// answers, one per member.
async fn check_upstream(target: &Target, timeout: Duration) -> Result<(), String> {
    let transport = target.upstream.client().channel();
    let members = transport.member_channels();
    if members.is_empty() {
        return Err("no member (its host names did not resolve yet)".to_owned());
    }
    let checks = members.into_iter().map(|member| async move {
        let result = check(&member, &target.service, timeout).await;
        transport.record_check(&member, result.clone());
        (member.label, result)
    });
    let results = futures_util::future::join_all(checks).await;
    if results.iter().any(|(_, r)| r.is_serving()) {
        return Ok(());
    }
    Err(results
        .iter()
        .map(|(label, r)| format!("{label}: {}", r.text()))
        .collect::<Vec<_>>()
        .join("; "))
}

/// One `grpc.health.v1.Health/Check` of one member.
async fn check(member: &MemberChannel, service: &str, timeout: Duration) -> CheckResult {
    let mut client = HealthClient::new(member.channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(timeout, client.check(request)).await;
    let of = if service.is_empty() {
        "the server".to_owned()
    } else {
        format!("service `{service}`")
    };
    match answer {
        Err(_) => CheckResult::NoAnswer(format!(
            "no answer to the health check of {of} within {}",
            crate::telemetry::human_duration(timeout)
        )),
        Ok(Ok(response)) => match response.into_inner().status() {
            Wire::Serving => CheckResult::Serving,
            other => CheckResult::NotServing(format!("{} for {of}", other.as_str_name())),
        },
        // Reachable, without the health service: counts as up.
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented && is_remote(&status) => {
            CheckResult::Serving
        }
        Ok(Err(status)) if status.code() == tonic::Code::NotFound && is_remote(&status) => {
            CheckResult::NotServing(format!("NOT_FOUND: the server does not know {of}"))
        }
        Ok(Err(status)) => CheckResult::NoAnswer(format!(
            "health check failed: {}",
            crate::upstream::error_chain(&status)
        )),
    }
}

/// A status the peer sent (tonic reports transport errors as statuses with a source).
fn is_remote(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_none()
}
