//! TEMPORARY compile shim of the spool interface; replaced by the real module.
#![allow(missing_docs, unreachable_pub, dead_code)]
pub mod admin;
pub mod cli;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SpoolSettings {
    pub dir: PathBuf,
}
impl Default for SpoolSettings {
    fn default() -> Self {
        Self {
            dir: "data/spool".into(),
        }
    }
}
pub struct NewEvent {
    pub command: String,
    pub method: String,
    pub upstream: String,
    pub order_key: Option<String>,
    pub operation_id: String,
    pub openim_key: Option<String>,
    pub payload: Vec<u8>,
    pub timeout_ms: u64,
}
pub struct StoredEvent {
    pub id: u64,
    pub delivery_id: String,
    pub attempts: u32,
    pub first_seen_ms: u64,
    pub last_error: Option<String>,
    pub event: NewEvent,
}
pub enum Outcome {
    Delivered,
    Retry(String),
    Permanent(String),
}
pub trait Deliver: Send + Sync + 'static {
    fn deliver<'a>(&'a self, ev: &'a StoredEvent, attempt: u32) -> BoxFuture<'a, Outcome>;
}
#[derive(Debug, thiserror::Error)]
#[error("spool")]
pub struct SpoolError;
#[derive(Debug, thiserror::Error)]
#[error("full")]
pub struct AppendError;
#[derive(Clone)]
pub struct Spool;
impl Spool {
    pub fn open(_s: &SpoolSettings) -> Result<Spool, SpoolError> {
        Err(SpoolError)
    }
    pub async fn append(&self, _ev: NewEvent) -> Result<u64, AppendError> {
        Err(AppendError)
    }
    pub fn start(&self, _d: std::sync::Arc<dyn Deliver>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }
    pub async fn shutdown(&self) {}
}
